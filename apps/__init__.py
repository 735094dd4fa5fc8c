"""The HTTP routes, one blueprint per concern, and the apps behind POST /generate."""
from __future__ import annotations

from flask import Flask


def register_apps(app: Flask) -> None:
    """Register every blueprint and its storage indexes on `app`."""
    from apps import attribution, generate, jobs, records, system
    from apps import openapi
    from apps.paint import routes as paint_routes
    from apps.paint import sessions
    from apps.study import routes as study_routes
    from core import image_store

    app.extensions["mongo"].add_indexes(image_store.create_indexes)
    app.register_blueprint(system.bp)
    app.register_blueprint(paint_routes.bp)
    app.extensions["mongo"].add_indexes(sessions.create_indexes)
    app.extensions["mongo"].add_indexes(attribution.create_indexes)
    generate.init_app(app)  # builds each app's handler now, so a template error stops startup
    records.init_app(app)
    jobs.init_app(app)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(study_routes.bp)
