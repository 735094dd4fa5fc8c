"""Production settings for gunicorn, read from the same environment as the app.

Worker processes: WEB_CONCURRENCY (default 1), each with GUNICORN_THREADS threads. One is
enough for a study: generation requests are long and I/O-bound, and threads serve them.
More than one process must agree on what they share (the Stable Diffusion instance pool, one
job per instance; the GPT limit; the /generate budgets), and they do through Redis
(REDIS_URL, core/shared.py). Without it each process would keep its own SD pool and send
its own job to every WebUI instance, one more per worker, so the server refuses to start
more than one worker without REDIS_URL, however their number is given (WEB_CONCURRENCY or
gunicorn's -w). A setting it cannot read stops it too, with one line on stderr that names
it: a SystemExit leaves gunicorn at once, where any other exception raised here would be
printed as "Failed to read config file" and a traceback. (A WEB_CONCURRENCY that is not an
integer is refused by gunicorn itself, which reads it for its own default before this file.)
"""
import logging
import os
import sys

from config import from_env
from core import logs

try:
    _settings = from_env()
except ValueError as error:  # a setting it cannot read: say which and stop
    sys.exit(f"gunicorn.conf.py: {error}")

bind = f"{_settings['HOST']}:{_settings['PORT']}"
workers = _settings["WEB_CONCURRENCY"]  # checked, whatever sets it, in on_starting
# gthread, reading every request whole on its event loop before a thread serves it (so slow
# clients hold no thread), and answering what it refuses in the envelope; see core/worker.py.
worker_class = "core.worker.BufferedThreadWorker"
threads = int(os.environ.get("GUNICORN_THREADS") or 64)
# Connections open at once, slow ones included; beyond them new ones wait in the listen backlog.
worker_connections = int(os.environ.get("GUNICORN_CONNECTIONS") or 1000)
# Generation requests wait for GPT and several image jobs: minutes, not gunicorn's 30 s.
timeout = int(os.environ.get("GUNICORN_TIMEOUT") or 900)
# On SIGTERM let in-flight requests finish (or fail cleanly) before the worker exits.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT") or 120)
keepalive = 5
# Logs: JSON lines on stderr, as `python app.py` writes them (core.logs). gunicorn's access log is
# off: it writes query strings, and the app writes each request's line without one.
logconfig_dict = logs.config(_settings["LOG_LEVEL"])
logging.captureWarnings(True)
accesslog = None
errorlog = "-"
loglevel = _settings["LOG_LEVEL"].lower()


def _refusal(count: int) -> str | None:
    """Return why the server must not start `count` worker processes, or None if it may."""
    if count < 1:
        return f"the worker processes (WEB_CONCURRENCY) must be 1 or more, got {count}"
    if count > 1 and not _settings["REDIS_URL"]:
        return (f"{count} worker processes need REDIS_URL: without it each keeps its own SD instance pool "
                f"(and GPT limit and /generate budgets), and stacks one job per worker on every WebUI instance. "
                f"Set REDIS_URL to share them (README, \"Several processes and hosts\"), or WEB_CONCURRENCY=1.")
    return None


def on_starting(server):
    """Refuse to start a worker count the deployment cannot share (see the docstring), before any worker."""
    refusal = _refusal(server.cfg.workers)
    if refusal is not None:
        sys.exit(f"gunicorn.conf.py: {refusal}")


def worker_exit(server, worker):
    """Close what the worker's app opened (records waiting, backends, the embedded store)."""
    import app as entry  # the module gunicorn loaded `app:app` from, in this worker

    built = vars(entry).get("app")
    if built is not None:
        from core.factory import close_app

        close_app(built)
