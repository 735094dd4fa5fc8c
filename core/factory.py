"""The application factory: settings, storage, security, error handling and routes."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

import config
from core import backends, db, envelope, request_log, security
from core.embedded_store import EmbeddedStore

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
    app = Flask(__name__.split(".")[0])
    app.config.update(config.from_env(env))
    app.config.update(overrides or {})
    app.json.ensure_ascii = False  # participants read Chinese; send it as UTF-8, not \\u escapes
    app.json.sort_keys = False

    envelope.register_error_handlers(app)
    request_log.init_app(app)  # first, so even a rejected request gets an id and a log line
    security.init_app(app)
    _open_store(app)
    backends.init_app(app)

    from apps import register_apps

    register_apps(app)
    return app
