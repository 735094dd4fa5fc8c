"""Every save of a participant, kept in `session_history`, and the order in which saves commit.

A save takes the next number from the participant's `revisionSeq`, writes its history
entry (uncommitted), then sets the participant's state in one atomic update that only
applies while the participant's `revision` is older, and last marks the entry committed.
An entry is visible when it is committed or is the participant's current revision, so a
failure at any step leaves either the old state with no visible entry, or the new state
with its entry; of two concurrent saves both are kept and the later revision wins.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from apps.paint.stages import SCHEME_FIELDS
from core.envelope import NotFound

log = logging.getLogger(__name__)

HISTORY = "session_history"
PARTICIPANTS = "participants"
# Entry status as strings: nx-27017 turns booleans written by $set into integers.
PENDING, COMMITTED = "pending", "committed"
STATE_KEYS = ("currentStage", "designTask", "schemeRefs")
# Fields of the old one-document format, dropped when a participant is converted.
LEGACY_FIELDS = tuple(SCHEME_FIELDS.values())


def create_indexes(db: Database) -> None:
    """Give each participant's revisions one entry each, listed newest first."""
    db[HISTORY].create_index([("username", ASCENDING), ("revision", ASCENDING)],
                             unique=True, name="username_revision")


def _next_revision(db: Database, participant_id: ObjectId) -> int:
    counter = db[PARTICIPANTS].find_one_and_update(
        {"_id": participant_id},
        # $max gives old documents a `revision` of 0, so the guard in _set_state can match them.
        {"$inc": {"revisionSeq": 1}, "$max": {"revision": 0}},
        projection={"revisionSeq": 1},
        return_document=ReturnDocument.AFTER,
    )
    if counter is None:
        raise NotFound("the participant was removed while saving; call /paint/start first")
    return counter["revisionSeq"]


def _set_state(db: Database, participant_id: ObjectId, revision: int, entry: dict[str, Any]) -> int | None:
    """Make `entry` the participant's state unless a later revision already is; return the one replaced."""
    before = db[PARTICIPANTS].find_one_and_update(
        {"_id": participant_id, "revision": {"$lt": revision}},
        {"$set": {**{key: entry[key] for key in STATE_KEYS}, "revision": revision,
                  "historyId": entry["_id"], "updatedAt": entry["savedAt"]},
         "$unset": {field: "" for field in LEGACY_FIELDS}},
        projection={"revision": 1},
        return_document=ReturnDocument.BEFORE,
    )
    return None if before is None else before.get("revision", 0)


def _mark_committed(db: Database, username: str, revisions: list[int]) -> None:
    db[HISTORY].update_many({"username": username, "revision": {"$in": revisions}},
                            {"$set": {"status": COMMITTED}})


def entry_of(participant: dict[str, Any], state: dict[str, Any], revision: int, kind: str,
             saved_at: datetime) -> dict[str, Any]:
    """Return a history entry of `participant` holding `state` (currentStage, designTask, schemeRefs)."""
    return {"_id": ObjectId(), "participantId": participant["_id"], "username": participant["username"],
            "revision": revision, "kind": kind, "savedAt": saved_at, "status": PENDING,
            **{key: state[key] for key in STATE_KEYS}}


def commit(db: Database, participant: dict[str, Any], state: dict[str, Any]) -> int:
    """Record `state` as the participant's next save, current unless a later one is; return its revision."""
    pid = participant["_id"]
    revision = _next_revision(db, pid)
    entry = entry_of(participant, state, revision, "save", datetime.now(timezone.utc))
    db[HISTORY].insert_one(entry)
    replaced = _set_state(db, pid, revision, entry)
    if replaced is None:
        # A later save is already current: this one still belongs in the history.
        _mark_committed(db, participant["username"], [revision])
        return revision
    try:
        # Also settle the revision this one replaced, in case its own marking failed.
        _mark_committed(db, participant["username"], [revision, replaced])
    except Exception:  # the state is saved; visibility by revision covers the entry
        log.warning("saved revision %d of %s but could not mark it committed", revision, pid, exc_info=True)
    return revision


def visible(participant: dict[str, Any]) -> dict[str, Any]:
    """Return the filter of a participant's visible entries."""
    # By username, which is unique and never changes: nx-27017 cannot match ObjectId fields but _id.
    return {"username": participant["username"],
            "$or": [{"status": COMMITTED}, {"revision": participant.get("revision", 0)}]}


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    """Return what the history list shows of one entry."""
    refs = entry.get("schemeRefs") or {}
    return {
        "id": str(entry["_id"]),
        "revision": entry["revision"],
        "savedAt": entry["savedAt"],  # the API's JSON writes it in its one time format
        "kind": entry.get("kind", "save"),
        "currentStage": entry["currentStage"],
        "designTask": entry["designTask"],
        "counts": {stage: len(refs.get(field) or []) for stage, field in SCHEME_FIELDS.items()},
    }


def list_saves(db: Database, participant: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Return summaries of the participant's visible saves, newest first."""
    found = db[HISTORY].find(visible(participant)).sort("revision", DESCENDING).limit(limit)
    return [summary(entry) for entry in found]


def find_entry(db: Database, entry_id: ObjectId) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Return the participant and the visible entry `entry_id`, or None."""
    entry = db[HISTORY].find_one({"_id": entry_id})
    if entry is None:
        return None
    participant = db[PARTICIPANTS].find_one({"_id": entry["participantId"]}, {"username": 1, "revision": 1})
    if participant is None:
        return None
    shown = entry.get("status") == COMMITTED or entry["revision"] == participant.get("revision", 0)
    return (participant, entry) if shown else None


def keep_legacy(db: Database, participant: dict[str, Any], state: dict[str, Any], saved_at: datetime) -> None:
    """Record an old-format participant's state as its revision 0, once, before it is converted."""
    entry = {**entry_of(participant, state, 0, "legacy", saved_at), "status": COMMITTED}
    try:
        db[HISTORY].insert_one(entry)
    except DuplicateKeyError:
        pass  # a concurrent save recorded the same old state first
