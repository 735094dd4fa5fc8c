"""GET /openapi.json and GET /docs: the API's description for tools and for people.

/docs is Swagger UI, whose assets the flask-swagger-ui package installs from PyPI and this
server serves itself (no CDN: a study network may be offline), started on /openapi.json.
Both sit behind API_TOKEN like every route but the probes: they reveal no data, but a
deployment that asks for a token should not advertise its researcher routes to anyone.
"""
from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, jsonify, render_template, send_from_directory

from apps.openapi.document import build_document
from core.envelope import NotFound

bp = Blueprint("openapi", __name__, template_folder="templates")

SWAGGER_DIST = Path(flask_swagger_ui.__file__).parent / "dist"
OWN_ASSETS = Path(__file__).parent / "static"
# The files the page loads: Swagger UI's bundle and style, and the line that starts it.
ASSETS = {"swagger-ui.css": SWAGGER_DIST, "swagger-ui-bundle.js": SWAGGER_DIST, "docs.js": OWN_ASSETS}
# Scripts and styles from this server only; Swagger UI styles some elements inline.
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'")


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """Answer the OpenAPI document as plain JSON (not in the envelope), for tools."""
    return jsonify(build_document())


@bp.get("/docs")
def docs() -> Response:
    """Answer the page that shows the document with Swagger UI."""
    info = build_document()["info"]
    html = render_template("openapi/docs.html", title=f"{info['title']} {info['version']}",
                           version=version("flask-swagger-ui"))
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


@bp.get("/docs/assets/<name>")
def docs_asset(name: str) -> Response:
    """Serve one asset of the docs page; they change only with the package, so cache for a day."""
    if name not in ASSETS:
        raise NotFound(f"the docs page has no asset {name!r}")
    response = send_from_directory(ASSETS[name], name, max_age=86400)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
