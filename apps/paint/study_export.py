"""Export a study for analysis: sessions, every save, the schemes, generation records and all blobs.

`export_study` is a plain function (the `flask export-study` command wraps it); the layout
is described in apps.paint.study_files. Nothing in the database is changed.
"""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bson import ObjectId, json_util
from pymongo.database import Database

from apps.paint import scheme_store, study_files
from apps.paint.scheme_store import SCHEMES
from apps.paint.sessions import HISTORY, PARTICIPANTS, SCHEME_FIELDS, Participant, visible
from apps.records import COLLECTION as GENERATIONS
from apps.records import of_participant
from core import json_codec
from core.image_store import BUCKET, Image, StoredImages, is_key
from core.json_codec import iso_utc

log = logging.getLogger(__name__)

BATCH = 500
Progress = Callable[[Sequence[str]], AbstractContextManager[Iterable[str]]]


class StudyExportError(RuntimeError):
    """The export cannot be made as asked."""


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, (dict, list)):
        return json_util.dumps(value, ensure_ascii=False)
    return value


def _write_csv(out: study_files.ExportWriter, name: str, header: list[str], rows: Iterable[list[Any]]) -> None:
    with out.text(name) as text:
        writer = csv.writer(text)
        writer.writerow(header)
        for row in rows:
            writer.writerow([_cell(value) for value in row])


def _find_in(db: Database, collection: str, ids: list[Any]) -> Iterator[dict[str, Any]]:
    for start in range(0, len(ids), BATCH):
        yield from db[collection].find({"_id": {"$in": ids[start:start + BATCH]}})


def _hashes_in(value: Any) -> Iterator[str]:
    """Yield every SHA-256 a generation record mentions: image refs and hash strings."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _hashes_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _hashes_in(item)
    elif isinstance(value, str) and is_key(value):
        yield value


def _counts(lists: dict[str, list[Any]]) -> list[int]:
    return [len(lists.get(field) or []) for field in SCHEME_FIELDS.values()]


def _select(db: Database, username: str | None) -> dict[str, list[dict[str, Any]]]:
    """Return the documents to export: participants, their visible saves, schemes, generations."""
    who = {"username": username} if username else {}
    participants = list(db[PARTICIPANTS].find(who).sort("username", 1))
    if username and not participants:
        raise StudyExportError(f"no participant is named {username!r}")
    shown = [visible(Participant.model_validate(p)) for p in participants]
    saves = [entry for match in shown for entry in db[HISTORY].find(match).sort("revision", 1)]
    scheme_ids = list(dict.fromkeys(
        sid for doc in participants + saves for ids in (doc.get("schemeRefs") or {}).values() for sid in ids))
    return {
        PARTICIPANTS: participants,
        HISTORY: saves,
        SCHEMES: list(_find_in(db, SCHEMES, scheme_ids)),
        GENERATIONS: list(db[GENERATIONS].find(of_participant(username) if username else {}).sort("createdAt", 1)),
    }


def _blob_keys(db: Database, records: dict[str, list[dict[str, Any]]]) -> list[str]:
    keys = [ref["sha256"] for doc in records[SCHEMES] for ref in scheme_store.references(doc)]
    keys += [key for doc in records[GENERATIONS] for key in _hashes_in(doc)]
    wanted = list(dict.fromkeys(keys))
    # Hash-like strings of a record are blobs only when the image store has them.
    stored = {doc["_id"] for doc in _find_in(db, f"{BUCKET}.files", wanted)}
    return [key for key in wanted if key in stored]


def _inline_blobs(participants: list[dict[str, Any]]) -> Iterator[Image]:
    """Yield the images of participants still in the old format, whose schemes hold them inline."""
    for doc in participants:
        for schemes in (Participant.model_validate(doc).inline or {}).values():
            for scheme in schemes:
                yield from scheme_store.split(scheme).blobs


STAGE_COUNTS = [f"{field.removesuffix('Schemes')}Count" for field in SCHEME_FIELDS.values()]
SESSION_COLUMNS = ["participantId", "username", "createdAt", "updatedAt", "currentStage", "designTask",
                   "revision", "format", *STAGE_COUNTS]
SAVE_COLUMNS = ["saveId", "participantId", "username", "revision", "kind", "savedAt", "currentStage",
                "designTask", *STAGE_COUNTS, *SCHEME_FIELDS.values()]


# Whose generation each was (apps.attribution), first in generations.csv; the whole of it is in `participant`.
ATTRIBUTION_COLUMNS = ["attributedTo", "attributionMethod", "attributionEvidence", "attributionCandidates"]


def _attribution_cells(doc: dict[str, Any]) -> list[Any]:
    found = doc.get("participant") or {}
    evidence = "; ".join(f"{e['method']}: {e['detail']} ({', '.join(e['candidates'])})"
                         for e in found.get("evidence") or [])
    return [found.get("username"), found.get("method"), evidence, " ".join(found.get("candidates") or [])]


def _session_row(doc: dict[str, Any]) -> list[Any]:
    p = Participant.model_validate(doc)
    return [p.id, p.username, p.created_at, p.updated_at, p.current_stage, p.design_task, p.revision,
            "refs" if p.inline is None else "inline", *_counts(p.inline or p.scheme_refs or {})]


def _save_row(e: dict[str, Any]) -> list[Any]:
    refs = e["schemeRefs"]
    return [e["_id"], e["participantId"], e["username"], e["revision"], e.get("kind"), e["savedAt"],
            e["currentStage"], e["designTask"], *_counts(refs),
            *(" ".join(refs.get(field) or []) for field in SCHEME_FIELDS.values())]


def _scheme_row(s: dict[str, Any], files: dict[str, dict[str, Any]]) -> list[Any]:
    moved = " ".join(f"{key}={files[s['scheme'][key]['sha256']]['file']}" for key in s["moved"])
    return [s["_id"], moved, {k: v for k, v in s["scheme"].items() if k not in s["moved"]}]


def _tables(out: study_files.ExportWriter, records: dict[str, list[dict[str, Any]]],
            files: dict[str, dict[str, Any]]) -> None:
    _write_csv(out, "sessions.csv", SESSION_COLUMNS, map(_session_row, records[PARTICIPANTS]))
    _write_csv(out, "saves.csv", SAVE_COLUMNS, map(_save_row, records[HISTORY]))
    _write_csv(out, "schemes.csv", ["schemeId", "files", "inline"],
               (_scheme_row(s, files) for s in records[SCHEMES]))
    generations = records[GENERATIONS]
    columns = list(dict.fromkeys(key for doc in generations for key in doc))
    _write_csv(out, "generations.csv", [*ATTRIBUTION_COLUMNS, *columns],
               ([*_attribution_cells(doc), *(doc.get(c) for c in columns)] for doc in generations))


def _write_blob(out: study_files.ExportWriter, files: dict[str, dict[str, Any]], key: str, blob: Image) -> None:
    name = study_files.blob_path(key, blob.content_type)
    out.binary(name, blob.data)
    files[key] = {"file": name, "contentType": blob.content_type, "size": len(blob.data)}


def export_study(db: Database, target: Path, *, username: str | None = None, as_zip: bool = False,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Write the study (or one participant's part of it) to `target`; return the manifest."""
    records = _select(db, username)
    keys = _blob_keys(db, records)
    out = study_files.ExportWriter(target, as_zip)
    files: dict[str, dict[str, Any]] = {}
    try:
        stored = StoredImages(db, keys)  # every files document in one query, each file's chunks in turn
        with (progress or nullcontext)(keys) as bar:
            for key in bar:
                _write_blob(out, files, key, stored.get(key))
        for blob in _inline_blobs(records[PARTICIPANTS]):
            if blob.sha256 not in files:
                _write_blob(out, files, blob.sha256, blob)
        for collection, docs in records.items():
            with out.text(study_files.record_path(collection)) as text:
                text.writelines(json_codec.dumps_document(doc) + "\n" for doc in docs)
        _tables(out, records, files)
        manifest = {
            "format": study_files.FORMAT, "version": study_files.VERSION,
            "exportedAt": iso_utc(datetime.now(timezone.utc)), "database": db.name, "username": username,
            "counts": {**{name: len(docs) for name, docs in records.items()}, "blobs": len(files)},
            "records": {name: study_files.record_path(name) for name in records}, "blobs": files,
        }
        with out.text(study_files.MANIFEST) as text:
            json.dump(manifest, text, ensure_ascii=False, indent=1)
    finally:
        out.close()
    log.info("exported %s to %s", manifest["counts"], target)
    return manifest
