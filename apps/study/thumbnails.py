"""Small copies of stored images for the dashboard's pages, made once with Pillow and kept on disk.

A page of a hundred sketches loads a hundred thumbnails of a few kilobytes each, not the
canvases. A thumbnail is made from the image-store blob of a SHA-256 on first request,
at most `SIZE` pixels on its longer side, as WebP (alpha kept: sketches are often drawn on
transparent canvases), and written under DATA_DIR/thumbnails/ by the same hash, so it is
never made twice, by this process or another. Only what the bytes say is a PNG, JPEG or
WebP image is read: a blob of text, SVG or anything else is refused.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path

import PIL.Image
from pymongo.database import Database

from core.envelope import ApiError, NotFound
from core.image_store import Image, get_image, sniff_content_type

log = logging.getLogger(__name__)

DIRECTORY = "thumbnails"  # under DATA_DIR
SIZE = 240
FORMAT, CONTENT_TYPE = "WEBP", "image/webp"
QUALITY = 80


class NotAnImage(ApiError):
    """The stored blob is no PNG, JPEG or WebP image, or one Pillow cannot read."""

    status = 415


def stored_picture(db: Database, key: str) -> Image:
    """Return the stored image `key` if its bytes are a PNG, JPEG or WebP image; raise NotFound or NotAnImage."""
    image = get_image(db, key)
    if image is None:
        raise NotFound(f"no image has the SHA-256 {key}")
    content_type = sniff_content_type(image.data)
    if content_type is None:
        raise NotAnImage(f"the blob {key} is not a PNG, JPEG or WebP image")
    return Image(image.data, content_type)  # its own type, whatever its data URI declared


def _shrink(data: bytes) -> bytes:
    try:
        with PIL.Image.open(io.BytesIO(data)) as picture:
            picture.draft("RGB", (SIZE, SIZE))  # JPEG decodes at a fraction of its size
            picture.thumbnail((SIZE, SIZE))
            has_alpha = picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info
            out = io.BytesIO()
            picture.convert("RGBA" if has_alpha else "RGB").save(out, FORMAT, quality=QUALITY)
            return out.getvalue()
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise NotAnImage(f"the image cannot be read: {error}") from None


def _path(directory: Path, key: str) -> Path:
    return directory / key[:2] / f"{key}-{SIZE}.webp"


def thumbnail(db: Database, directory: Path, key: str) -> bytes:
    """Return the thumbnail of the stored image `key`, made and kept in `directory` on first request."""
    path = _path(directory, key)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data = _shrink(stored_picture(db, key).data)
    try:
        _keep(path, data)
    except OSError as error:  # a full or read-only disk costs the cache, not the page
        log.warning("could not keep the thumbnail %s: %s", path, error)
    return data


def _keep(path: Path, data: bytes) -> None:
    """Write `data` beside `path` and rename it into place, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def etag(key: str) -> str:
    """Return the ETag of the thumbnail of `key`: the hash and the size it was made at."""
    return f"{key}-{SIZE}"
