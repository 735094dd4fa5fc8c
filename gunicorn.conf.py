"""Production settings for gunicorn, read from the same environment as the app.

One worker process with many threads: generation requests are long and I/O-bound, and
the Stable Diffusion instance pool (one job per instance) must be shared by every
request of the server, which a single process gives for free.
"""
import logging
import os

from config import from_env
from core import logs

_settings = from_env()

bind = f"{_settings['HOST']}:{_settings['PORT']}"
workers = 1  # the SD pool lives in this process; see the docstring before raising it
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


def worker_exit(server, worker):
    """Close what the worker's app opened (records waiting, backends, the embedded store)."""
    import app as entry  # the module gunicorn loaded `app:app` from, in this worker

    built = vars(entry).get("app")
    if built is not None:
        from core.factory import close_app

        close_app(built)
