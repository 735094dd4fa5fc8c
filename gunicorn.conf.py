"""Production settings for gunicorn, read from the same environment as the app.

One worker process with many threads: generation requests are long and I/O-bound, and
the Stable Diffusion instance pool (one job per instance) must be shared by every
request of the server, which a single process gives for free.
"""
import os

from config import from_env

_settings = from_env()

bind = f"{_settings['HOST']}:{_settings['PORT']}"
workers = 1  # the SD pool lives in this process; see the docstring before raising it
# gthread, with every request read whole on the event loop before a thread serves it, so
# slow clients never hold a thread; see core/worker.py.
worker_class = "core.worker.BufferedThreadWorker"
threads = int(os.environ.get("GUNICORN_THREADS") or 64)
# Connections open at once, slow ones included; beyond them new ones wait in the listen backlog.
worker_connections = int(os.environ.get("GUNICORN_CONNECTIONS") or 1000)
# Generation requests wait for GPT and several image jobs: minutes, not gunicorn's 30 s.
timeout = int(os.environ.get("GUNICORN_TIMEOUT") or 900)
# On SIGTERM let in-flight requests finish (or fail cleanly) before the worker exits.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT") or 120)
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = _settings["LOG_LEVEL"].lower()


def worker_exit(server, worker):
    """Close what the worker's app opened (records waiting, backends, the embedded store)."""
    import app as entry  # the module gunicorn loaded `app:app` from, in this worker

    built = vars(entry).get("app")
    if built is not None:
        from core.factory import close_app

        close_app(built)
