"""Researcher routes over the generation records and their images.

GET /generations lists record summaries newest first, GET /generations/<id> returns one
whole record, and GET /images/<sha256> serves an image the records refer to. Images
never change under their hash, so browsers may cache them for good.
"""
from __future__ import annotations


from flask import Blueprint, Response, request

from apps import record_queries as queries
from core.db import get_db
from core.envelope import BadInput, NotFound, ok
from core.image_store import get_image, is_key

bp = Blueprint("generations", __name__)

IMMUTABLE = "public, max-age=31536000, immutable"
# Blobs of saved schemes keep the media type their data URI declared (text/html, SVG with
# scripts, ...): opened directly, such a blob must not run as a page of the API's origin.
UNTRUSTED = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'"}


@bp.get("/generations")
def list_generations():
    """Return a page of record summaries, newest first, and the cursor of the next page."""
    query = queries.read_page_query(request.args)
    return ok(queries.list_page(get_db(), query))


@bp.get("/generations/<record_id>")
def get_generation(record_id: str):
    """Return one whole generation record."""
    return ok(queries.get_record(get_db(), queries.object_id(record_id)))


@bp.get("/images/<key>")
def get_stored_image(key: str):
    """Serve the bytes of a stored image, cacheable for good under its hash."""
    if not is_key(key.lower()):
        raise BadInput("sha256", "must be 64 hex characters")
    image = get_image(get_db(), key.lower())
    if image is None:
        raise NotFound(f"no image has the SHA-256 {key.lower()}")
    response = Response(image.data, content_type=image.content_type)
    response.headers["Cache-Control"] = IMMUTABLE
    response.headers.update(UNTRUSTED)
    response.set_etag(key.lower())
    return response.make_conditional(request)
