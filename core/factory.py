"""The application factory: settings, storage, security, error handling and routes."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

import config
from core import backends, db, envelope, monitoring, request_body, security, shared
from core.embedded_store import EmbeddedStore
from core.json_codec import ApiJSON

log = logging.getLogger(__name__)


def _open_store(app: Flask) -> None:
    uri = app.config["MONGO_URI"]
    if uri:
        log.info("store: MongoDB at %s, database %r", db.redact(uri), app.config["MONGO_DB"])
    else:
        embedded = EmbeddedStore(Path(app.config["DATA_DIR"]) / "mongo").start()
        app.extensions["embedded_store"] = embedded
        uri = embedded.uri
        log.info("store: embedded nx-27017 at %s, data in %s (set MONGO_URI for a real MongoDB)", uri, embedded.data_dir)
    db.init_app(app, uri)


def create_app(overrides: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None) -> Flask:
    """Build the API server from the environment (or `env`), with `overrides` applied last."""
    app = Flask(__name__.split(".")[0], static_folder=None)  # an API: no /static route
    # No redirect: Werkzeug answers `//images//x` with a 308 to `/images/x`, outside the envelope
    # (routing redirects bypass the error handlers). Set before any route is added.
    app.url_map.merge_slashes = False
    app.config.update(config.from_env(env))
    app.config.update(overrides or {})
    app.json = ApiJSON(app)  # participants read Chinese: UTF-8, keys in order, one time format
    if app.config["TRUSTED_PROXIES"]:
        # Behind a reverse proxy the TCP peer is the proxy; the client's own address (which the
        # /generate rate limit and the access log use) is in X-Forwarded-For.
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)

    envelope.register_error_handlers(app)
    request_body.init_app(app)
    _open_store(app)
    shared.init_app(app)  # before the backends and limits that share through it
    backends.init_app(app)
    monitoring.init_app(app)  # the first request hooks, so even a refused request gets an id and a log line
    security.init_app(app)

    from apps import register_apps

    register_apps(app)
    return app


def close_app(app: Flask) -> None:
    """Close what `app` opened, in the reverse order: jobs, records waiting, backends, shared state, database, store.

    The entry points call it when they stop (app.py, gunicorn's worker_exit); the atexit
    hooks of the parts are only the backstop of a process that exits without it.
    """
    from apps import jobs

    jobs.close_app(app)  # running jobs end, and are recorded, before what they use closes
    journal = app.extensions.get("record_journal")
    if journal is not None:
        journal.close()
    backends.close_app_backends(app)
    app.extensions[shared.EXTENSION].close()
    app.extensions["mongo"].close()
    embedded = app.extensions.get("embedded_store")
    if embedded is not None:
        embedded.stop()
