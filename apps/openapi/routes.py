"""GET /openapi.json and GET /docs: the API's description for tools and for people.

Both sit behind API_TOKEN like every route but the probes: they reveal no data, but a
deployment that asks for a token should not advertise its researcher routes to anyone.
"""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template

from apps.openapi.docs_view import markdown_blocks, markdown_inline, page
from apps.openapi.document import build_document

bp = Blueprint("openapi", __name__, template_folder="templates")

# The page loads nothing from elsewhere; say so to the browser too.
DOCS_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """Answer the OpenAPI document as plain JSON (not in the envelope), for tools."""
    return jsonify(build_document())


@bp.get("/docs")
def docs() -> Response:
    """Answer the document rendered as one self-contained HTML page."""
    document = build_document()
    html = render_template("openapi/docs.html", intro=markdown_blocks(document["info"]["description"]),
                           md=markdown_inline, **page(document))
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response
