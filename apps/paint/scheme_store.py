"""Saved schemes: each distinct scheme once, as a small document in `session_schemes` and blobs.

A scheme is the client's opaque JSON object. Its id is the SHA-256 of its JSON (as orjson
writes it, keys in the client's order), so a save writes only the schemes the participant
changed, and a session's state is three lists of ids. Each top-level value of a scheme
stays inline in its document when small, or moves out to a content-addressed blob in the
image store, replaced by a reference: a data-URI image (any size) as its decoded bytes,
a long string (an SVG) as UTF-8 text, any other large value (a path list) as compact
JSON. Loading gives back the same JSON values in the same key order, the moved ones as
JSON text written from their bytes, ready to answer; a data URI moves as bytes only when
re-encoding them gives back the very same text. Writes are idempotent and come before
anything points at them: blobs, then scheme documents, then the state.

Ids of schemes stored before the id was orjson's (SHA-256 of `json.dumps` with ASCII
escapes) stay what they are: an id is only ever looked up, never recomputed from a
stored scheme, so old states load as ever, and the next save of a scheme stores its
small document once more under the new id (its blobs are found stored, not written again).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database
from pymongo.errors import BulkWriteError

from core import json_codec
from core.envelope import CODE_STORAGE, ApiError
from core.image_store import Image, StoredImages, put_image, stored_keys

log = logging.getLogger(__name__)

SCHEMES = "session_schemes"
DUPLICATE_KEY = 11000
THRESHOLD = 16 * 1024  # characters of JSON above which a value leaves the document
_MIME = re.compile(r"^[A-Za-z0-9][\w.+-]*/[\w.+-]+$")
_SVG_STARTS = ("<svg", "<?xml")
TEXT = "text/plain; charset=utf-8"

Scheme = dict[str, Any]
SchemeLists = dict[str, list[Scheme]]  # participant field -> schemes
SchemeRefs = dict[str, list[str]]  # participant field -> scheme ids


class MissingStoredData(ApiError):
    """A stored session points at a scheme or blob the database no longer has."""

    status = 500
    code = CODE_STORAGE


class CorruptBlob(ValueError):
    """A blob's bytes do not match the reference that points at them."""


@dataclass(frozen=True)
class SplitScheme:
    """A scheme's stored form and the blobs its references point at."""

    stored: dict[str, Any]  # {"scheme": {key: value or reference}, "moved": [keys]}
    blobs: list[Image]  # any content type, not only pictures: the image store keeps them all


def scheme_id(scheme: Scheme) -> str:
    """Return the SHA-256 of the scheme's JSON: its identity in the store."""
    return hashlib.sha256(json_codec.dumps(scheme)).hexdigest()


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
        # Written by the standard library, as always, so that a value stored before keeps
        # its blob (orjson writes small floats as 1e-7, not 1e-07).
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if len(text) <= THRESHOLD:
            return None
        blob = Image(text.encode("utf-8", "surrogatepass"), "application/json")
        return blob, _ref(blob, "json")
    return None


def split(scheme: Scheme) -> SplitScheme:
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


def _value(ref: dict[str, Any], data: bytes) -> json_codec.JSONText:
    """Return the JSON of a moved value, written from its blob's bytes with as few copies as may be."""
    if len(data) != ref["size"]:
        raise CorruptBlob(f"blob {ref['sha256']} has {len(data)} bytes, expected {ref['size']}")
    if ref["kind"] == "dataUri":
        # The prefix is the client's text (JSON-escaped here); base64 needs no escaping, nor copying.
        return json_codec.JSONText(json_codec.dumps(ref["prefix"])[:-1], base64.b64encode(data), b'"')
    if ref["kind"] == "json":
        return json_codec.JSONText(data)  # compact JSON as it was stored
    return json_codec.JSONText(json_codec.dumps(data.decode("utf-8")))


def join(stored: dict[str, Any], blobs: Mapping[str, bytes]) -> Scheme:
    """Return the client's scheme from its stored form and the bytes of its blobs, by SHA-256.

    Moved values come back as JSONText, to be answered: the same JSON values they were.
    """
    moved = set(stored.get("moved", []))
    return {
        key: _value(value, blobs[value["sha256"]]) if key in moved else value
        for key, value in stored["scheme"].items()
    }


def _insert_new(db: Database, docs: list[dict[str, Any]]) -> None:
    if not docs:
        return
    try:
        db[SCHEMES].insert_many(docs, ordered=False)
    except BulkWriteError as error:
        # A concurrent save stored the same scheme first: same id, same content.
        if any(e.get("code") != DUPLICATE_KEY for e in error.details.get("writeErrors", [])):
            raise


def _upload_missing(db: Database, new: dict[str, tuple[Scheme, dict[str, Any]]]) -> None:
    """Upload the blobs of `new` schemes that the image store lacks, checking all keys at once."""
    keys = {ref["sha256"] for _, stored in new.values() for ref in references(stored)}
    if not keys:
        return
    missing = keys - stored_keys(db, keys)
    for scheme, stored in new.values():
        if not missing:
            return
        if not any(ref["sha256"] in missing for ref in references(stored)):
            continue
        for blob in split(scheme).blobs:
            if blob.sha256 in missing:
                put_image(db, blob)
                missing.discard(blob.sha256)


def store(db: Database, lists: SchemeLists) -> SchemeRefs:
    """Store every scheme of `lists` not stored yet (blobs first) and return the lists as ids."""
    refs = {field: [scheme_id(s) for s in schemes] for field, schemes in lists.items()}
    by_id = {sid: s for field, schemes in lists.items() for sid, s in zip(refs[field], schemes, strict=True)}
    known = {doc["_id"] for doc in db[SCHEMES].find({"_id": {"$in": list(by_id)}}, {"_id": 1})} if by_id else set()
    # Keep only the small stored forms; blob bytes are made again for the ones to upload,
    # so a 100 MB save never holds a second copy of its images.
    new = {sid: (scheme, split(scheme).stored) for sid, scheme in by_id.items() if sid not in known}
    _upload_missing(db, new)
    _insert_new(db, [{"_id": sid, **stored} for sid, (_, stored) in new.items()])
    if new:
        log.info("stored %d new schemes of %d", len(new), len(by_id))
    return refs


def stored_forms(db: Database, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Return the stored form of each scheme id, raising MissingStoredData for any lacking."""
    wanted = list(dict.fromkeys(ids))
    found = {doc["_id"]: doc for doc in db[SCHEMES].find({"_id": {"$in": wanted}})} if wanted else {}
    lacking = [sid for sid in wanted if sid not in found]
    if lacking:
        raise MissingStoredData(f"the stored scheme {lacking[0][:12]}… is missing")
    return found


def _blob_bytes(images: StoredImages, form: dict[str, Any]) -> dict[str, bytes]:
    """Return the bytes of the blobs one stored form refers to, raising MissingStoredData for any lacking."""
    blobs = {}
    for ref in references(form):
        image = images.get(ref["sha256"])
        if image is None:
            raise MissingStoredData(f"the stored sketch data {ref['sha256'][:12]}… is missing from the image store")
        blobs[ref["sha256"]] = image.data
    return blobs


def load(db: Database, refs: SchemeRefs) -> SchemeLists:
    """Return the schemes of each list of ids, to be answered exactly as the client saved them."""
    forms = stored_forms(db, (sid for ids in refs.values() for sid in ids))
    # One scheme's blob bytes at a time: the session's JSON texts are all that accumulate.
    images = StoredImages(db, (ref["sha256"] for form in forms.values() for ref in references(form)))
    built: dict[str, Scheme] = {}
    for sid, form in forms.items():
        try:
            built[sid] = join(form, _blob_bytes(images, form))
        except CorruptBlob as error:
            raise MissingStoredData(f"the stored sketch data is damaged: {error}") from None
    return {field: [built[sid] for sid in ids] for field, ids in refs.items()}
