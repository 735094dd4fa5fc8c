"""The HTTP routes, one blueprint per concern, and the apps behind POST /generate."""
from __future__ import annotations

from flask import Flask


def register_apps(app: Flask) -> None:
    """Register every blueprint and its storage indexes on `app`."""
    from apps import system
    from apps.paint import routes as paint_routes
    from apps.paint import sessions

    app.register_blueprint(system.bp)
    app.register_blueprint(paint_routes.bp)
    app.extensions["mongo"].add_indexes(sessions.create_indexes)
