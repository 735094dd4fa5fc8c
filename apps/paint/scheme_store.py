"""Saved schemes in MongoDB: one small document per distinct scheme, its large values in GridFS.

`session_schemes` holds each distinct scheme once, under the SHA-256 of its JSON, in the
stored form of apps.paint.offload; the image store holds the blobs. A session's state is
then three lists of scheme ids, so a save writes only what the participant changed.
Writes are idempotent and come before anything points at them.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pymongo.database import Database
from pymongo.errors import BulkWriteError

from apps.paint import offload
from core.envelope import CODE_STORAGE, ApiError
from core.image_store import get_image, put_image, stored_keys

log = logging.getLogger(__name__)

SCHEMES = "session_schemes"
DUPLICATE_KEY = 11000

SchemeLists = dict[str, list[dict[str, Any]]]  # participant field -> schemes
SchemeRefs = dict[str, list[str]]  # participant field -> scheme ids


class MissingStoredData(ApiError):
    """A stored session points at a scheme or blob the database no longer has."""

    status = 500
    code = CODE_STORAGE


def _insert_new(db: Database, docs: list[dict[str, Any]]) -> None:
    if not docs:
        return
    try:
        db[SCHEMES].insert_many(docs, ordered=False)
    except BulkWriteError as error:
        # A concurrent save stored the same scheme first: same id, same content.
        if any(e.get("code") != DUPLICATE_KEY for e in error.details.get("writeErrors", [])):
            raise


def _upload_missing(db: Database, new: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Upload the blobs of `new` schemes that the image store lacks, checking all keys at once."""
    keys = {ref["sha256"] for _, stored in new.values() for ref in offload.references(stored)}
    if not keys:
        return
    missing = keys - stored_keys(db, keys)
    for scheme, stored in new.values():
        if not missing:
            return
        if not any(ref["sha256"] in missing for ref in offload.references(stored)):
            continue
        for blob in offload.split(scheme).blobs:
            if blob.sha256 in missing:
                put_image(db, blob)
                missing.discard(blob.sha256)


def store(db: Database, lists: SchemeLists) -> SchemeRefs:
    """Store every scheme of `lists` not stored yet (blobs first) and return the lists as ids."""
    refs = {field: [offload.scheme_id(s) for s in schemes] for field, schemes in lists.items()}
    by_id = {sid: s for field, schemes in lists.items() for sid, s in zip(refs[field], schemes, strict=True)}
    known = {doc["_id"] for doc in db[SCHEMES].find({"_id": {"$in": list(by_id)}}, {"_id": 1})} if by_id else set()
    # Keep only the small stored forms; blob bytes are made again for the ones to upload,
    # so a 100 MB save never holds a second copy of its images.
    new = {sid: (scheme, offload.split(scheme).stored) for sid, scheme in by_id.items() if sid not in known}
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


def load(db: Database, refs: SchemeRefs) -> SchemeLists:
    """Return the schemes of each list of ids, exactly as the client saved them."""
    forms = stored_forms(db, (sid for ids in refs.values() for sid in ids))

    def fetch(key: str) -> bytes:
        image = get_image(db, key)
        if image is None:
            raise MissingStoredData(f"the stored sketch data {key[:12]}… is missing from the image store")
        return image.data

    built: dict[str, dict[str, Any]] = {}
    for sid, form in forms.items():
        try:
            built[sid] = offload.join(form, fetch)
        except offload.CorruptBlob as error:
            raise MissingStoredData(f"the stored sketch data is damaged: {error}") from None
    return {field: [built[sid] for sid in ids] for field, ids in refs.items()}
