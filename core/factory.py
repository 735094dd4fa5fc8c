"""The application factory: settings, storage, security, error handling and routes."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

import config
from core import backends, db, envelope, metrics, rate_limit, request_log, security
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
    app.config.update(config.from_env(env))
    app.config.update(overrides or {})
    app.json = ApiJSON(app)  # participants read Chinese: UTF-8, keys in order, one time format
    if app.config["TRUSTED_PROXIES"]:
        # Behind a reverse proxy the TCP peer is the proxy; the client's own address (which the
        # /generate rate limit and the access log use) is in X-Forwarded-For.
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)

    envelope.register_error_handlers(app)
    request_log.init_app(app)  # first, so even a rejected request gets an id and a log line
    security.init_app(app)
    _open_store(app)
    backends.init_app(app)
    metrics.init_app(app)  # after the backends: it collects their counters at scrape time
    rate_limit.init_app(app)

    from apps import register_apps

    register_apps(app)
    return app
