"""Import a study export into a database: blobs first, then schemes, generations, saves, participants.

`import_study` is a plain function (the `flask import-study` command wraps it). It refuses
a database that already holds study data unless `force`, in which case documents with the
same `_id` are replaced and blobs already stored are kept.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from apps.paint import study_files
from apps.paint.study_export import Progress
from core import json_codec
from core.image_store import BUCKET, Image, is_key, put_image, stored_keys

log = logging.getLogger(__name__)

BATCH = 500
DUPLICATE_KEY = 11000


class StudyImportError(RuntimeError):
    """The export cannot be imported as asked."""


def _study_data(db: Database) -> list[str]:
    """Return the names of the study collections that hold documents."""
    names = [*study_files.RECORDS, f"{BUCKET}.files"]
    return [name for name in names if db[name].find_one({}, {"_id": 1}) is not None]


def _read_manifest(source: study_files.ExportReader) -> dict[str, Any]:
    if not source.exists(study_files.MANIFEST):
        raise StudyImportError(f"{source.source} has no {study_files.MANIFEST}; is it a study export?")
    with source.text(study_files.MANIFEST) as text:
        manifest = json.load(text)
    if manifest.get("format") != study_files.FORMAT or manifest.get("version") != study_files.VERSION:
        raise StudyImportError(f"{source.source} is not a version {study_files.VERSION} study export")
    return manifest


def _put_blobs(db: Database, source: study_files.ExportReader, blobs: dict[str, Any], progress: Progress | None) -> int:
    keys = list(blobs)
    bad = [key for key in keys if not is_key(key)]
    if bad:
        raise StudyImportError(f"blob name {bad[0]!r} is not a SHA-256")
    present = stored_keys(db, keys)
    with (progress or nullcontext)(keys) as bar:
        for key in bar:
            if key in present:
                continue
            content_type = blobs[key]["contentType"]
            # The name is rebuilt from the hash, never taken from the file, so nothing escapes the export.
            data = source.binary(study_files.blob_path(key, content_type))
            if hashlib.sha256(data).hexdigest() != key:
                raise StudyImportError(f"blob {key} does not match its hash; the export is damaged")
            put_image(db, Image(data, content_type))
    return len(keys) - len(present)


def _documents(source: study_files.ExportReader, collection: str) -> Iterator[dict[str, Any]]:
    with source.text(study_files.record_path(collection)) as lines:
        for line in lines:
            if line.strip():
                yield json_codec.loads_document(line)


def _write(target: Collection, docs: list[dict[str, Any]], force: bool) -> None:
    try:
        target.insert_many(docs, ordered=False)
    except BulkWriteError as error:
        errors = error.details.get("writeErrors", [])
        if not force or any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        for failed in errors:
            doc = docs[failed["index"]]
            target.replace_one({"_id": doc["_id"]}, doc, upsert=True)


def _insert_all(db: Database, source: study_files.ExportReader, collection: str, force: bool) -> int:
    count = 0
    batch: list[dict[str, Any]] = []
    for doc in _documents(source, collection):
        batch.append(doc)
        if len(batch) == BATCH:
            _write(db[collection], batch, force)
            count, batch = count + len(batch), []
    if batch:
        _write(db[collection], batch, force)
        count += len(batch)
    return count


def import_study(db: Database, source_path: Path, *, force: bool = False,
                 progress: Progress | None = None) -> dict[str, int]:
    """Restore the export at `source_path` (folder or zip) into `db`; return how much was written."""
    source = study_files.ExportReader(source_path)
    try:
        manifest = _read_manifest(source)
        busy = _study_data(db)
        if busy and not force:
            raise StudyImportError(f"database {db.name!r} already holds study data ({', '.join(busy)}); "
                                   "import into an empty database or pass --force")
        written = {"blobs": _put_blobs(db, source, manifest.get("blobs") or {}, progress)}
        for collection in study_files.RECORDS:
            if collection in (manifest.get("records") or {}):
                written[collection] = _insert_all(db, source, collection, force)
    finally:
        source.close()
    log.info("imported %s from %s", written, source_path)
    return written
