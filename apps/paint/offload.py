"""Schemes split for storage: large values move out to blobs, the rest stays a small document.

A scheme is the client's opaque JSON object. Each top-level value stays inline when small
or moves out to a content-addressed blob, replaced by a reference: a data-URI image (any
size) as its decoded bytes, a long string (an SVG) as UTF-8 text, any other large value (a
path list) as compact JSON. Joining gives back the same JSON values in the same key order;
a data URI moves as bytes only when re-encoding them gives back the very same text.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.image_store import Image

THRESHOLD = 16 * 1024  # characters of JSON above which a value leaves the document
_MIME = re.compile(r"^[A-Za-z0-9][\w.+-]*/[\w.+-]+$")
_SVG_STARTS = ("<svg", "<?xml")
TEXT = "text/plain; charset=utf-8"


class CorruptBlob(ValueError):
    """A blob's bytes do not match the reference that points at them."""


@dataclass(frozen=True)
class SplitScheme:
    """A scheme's stored form and the blobs its references point at."""

    stored: dict[str, Any]  # {"scheme": {key: value or reference}, "moved": [keys]}
    blobs: list[Image]  # any content type, not only pictures: the image store keeps them all


def scheme_id(scheme: dict[str, Any]) -> str:
    """Return the SHA-256 of the scheme's compact JSON: its identity in the store."""
    text = json.dumps(scheme, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _ref(blob: Image, kind: str, **extra: str) -> dict[str, Any]:
    return {"sha256": blob.sha256, "contentType": blob.content_type, "kind": kind,
            "size": len(blob.data), **extra}


def _data_uri(value: str) -> tuple[Image, dict[str, Any]] | None:
    header, comma, payload = value.partition(",")
    if not comma or not header.endswith(";base64"):
        return None
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None
    # Only canonical base64 comes back byte for byte from the bytes alone.
    if not data or base64.b64encode(data) != payload.encode("ascii"):
        return None
    mime = header[len("data:"):].split(";", 1)[0]
    blob = Image(data, mime if _MIME.match(mime) else "application/octet-stream")
    return blob, _ref(blob, "dataUri", prefix=header + comma)


def _move_out(value: Any) -> tuple[Image, dict[str, Any]] | None:
    """Return the blob and reference replacing `value`, or None to keep it inline."""
    if isinstance(value, str):
        if value.startswith("data:"):
            moved = _data_uri(value)
            if moved is not None:
                return moved
        if len(value) <= THRESHOLD:
            return None
        is_svg = value.lstrip()[:5].lower().startswith(_SVG_STARTS)
        blob = Image(value.encode("utf-8", "surrogatepass"), "image/svg+xml" if is_svg else TEXT)
        return blob, _ref(blob, "text")
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if len(text) <= THRESHOLD:
            return None
        blob = Image(text.encode("utf-8", "surrogatepass"), "application/json")
        return blob, _ref(blob, "json")
    return None


def split(scheme: dict[str, Any]) -> SplitScheme:
    """Return the stored form of `scheme`, large values replaced by references, and their blobs."""
    kept: dict[str, Any] = {}
    moved: list[str] = []
    blobs: list[Image] = []
    for key, value in scheme.items():
        found = _move_out(value)
        if found is None:
            kept[key] = value
            continue
        blob, ref = found
        kept[key] = ref
        moved.append(key)
        blobs.append(blob)
    return SplitScheme({"scheme": kept, "moved": moved}, blobs)


def references(stored: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the blob references of a stored scheme."""
    scheme = stored["scheme"]
    return [scheme[key] for key in stored.get("moved", [])]


def _value(ref: dict[str, Any], data: bytes) -> Any:
    if len(data) != ref["size"]:
        raise CorruptBlob(f"blob {ref['sha256']} has {len(data)} bytes, expected {ref['size']}")
    if ref["kind"] == "dataUri":
        return ref["prefix"] + base64.b64encode(data).decode("ascii")
    text = data.decode("utf-8", "surrogatepass")
    return json.loads(text) if ref["kind"] == "json" else text


def join(stored: dict[str, Any], fetch: Callable[[str], bytes]) -> dict[str, Any]:
    """Return the client's scheme from its stored form, reading blob bytes with `fetch(sha256)`."""
    moved = set(stored.get("moved", []))
    return {
        key: _value(value, fetch(value["sha256"])) if key in moved else value
        for key, value in stored["scheme"].items()
    }
