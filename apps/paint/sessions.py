"""Participant sessions in MongoDB (`participants` collection), one small document per username.

The document holds the current stage, the design task and `schemeRefs`: for each stage's
list, the ids of its schemes in apps.paint.scheme_store, whose large values live in GridFS.
Every save is also kept in apps.paint.history. Documents of the old format, with the
schemes inline, still load; their next save records their old state as revision 0 and
converts them.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DocumentTooLarge, DuplicateKeyError, PyMongoError

from apps.paint import history, scheme_store
from apps.paint.session_input import SavedState
from apps.paint.stages import NOT_READY, SCHEME_FIELDS
from core.envelope import CODE_STORAGE, ApiError, NotFound

log = logging.getLogger(__name__)

COLLECTION = history.PARTICIPANTS


class SaveNotStored(ApiError):
    """A save failed part-way through; the previous state is still the current one."""

    status = 503
    code = CODE_STORAGE


def create_indexes(db: Database) -> None:
    """Make usernames unique, so simultaneous first visits create one participant; index the history."""
    db[COLLECTION].create_index([("username", ASCENDING)], unique=True, name="username_unique")
    history.create_indexes(db)


def _new_participant() -> dict[str, Any]:
    # The upsert takes `username` from the query.
    return {
        "currentStage": NOT_READY,
        "designTask": "",
        "schemeRefs": {field: [] for field in SCHEME_FIELDS.values()},
        "revision": 0,
        "revisionSeq": 0,
        "createdAt": datetime.now(timezone.utc),
    }


def is_legacy(doc: dict[str, Any]) -> bool:
    """Return whether `doc` is in the old format, its schemes inline."""
    return "schemeRefs" not in doc


def client_state(db: Database, doc: dict[str, Any], participant: dict[str, Any]) -> dict[str, Any]:
    """Return the seven keys the client spreads into its state, from a participant or history document."""
    if is_legacy(doc):
        lists = {field: doc.get(field) or [] for field in SCHEME_FIELDS.values()}
    else:
        lists = scheme_store.load(db, {field: doc["schemeRefs"].get(field) or [] for field in SCHEME_FIELDS.values()})
    return {
        "_id": str(participant["_id"]),
        "username": participant["username"],
        "currentStage": doc.get("currentStage", NOT_READY),
        "designTask": doc.get("designTask", ""),
        **lists,
    }


def start(db: Database, username: str) -> dict[str, Any]:
    """Return the participant `username`, creating it on first visit."""
    participants = db[COLLECTION]
    try:
        # update_one, not find_one_and_update: nx-27017 drops $setOnInsert on the latter.
        participants.update_one({"username": username}, {"$setOnInsert": _new_participant()}, upsert=True)
    except DuplicateKeyError:
        pass  # two first visits raced and the other one inserted: its document is the one
    doc = participants.find_one({"username": username})
    return client_state(db, doc, doc)


def _keep_legacy_state(db: Database, participant_id: ObjectId) -> None:
    """Record an old-format document's inline state in the history before it is replaced."""
    doc = db[COLLECTION].find_one({"_id": participant_id})
    if doc is None or not is_legacy(doc):
        return
    lists = {field: doc.get(field) or [] for field in SCHEME_FIELDS.values()}
    if not any(lists.values()) and not doc.get("designTask"):
        return  # nothing was ever saved: no old state to keep
    state = {
        "currentStage": doc.get("currentStage", NOT_READY),
        "designTask": doc.get("designTask", ""),
        "schemeRefs": scheme_store.store(db, lists),
    }
    saved_at = doc.get("updatedAt") or doc.get("createdAt") or datetime.now(timezone.utc)
    history.keep_legacy(db, doc, state, saved_at)
    log.info("converting participant %s from the one-document format", participant_id)


def save(db: Database, username: str, state: SavedState) -> int:
    """Store `state` as the participant's current session, keeping it in the history; return its revision."""
    participant = db[COLLECTION].find_one({"username": username}, {"username": 1, "schemeRefs": 1})
    if participant is None:
        raise NotFound(f"participant {username!r} does not exist; call /paint/start first")
    try:
        refs = scheme_store.store(db, state.schemes)
        if is_legacy(participant):
            _keep_legacy_state(db, participant["_id"])
        return history.commit(db, participant, {
            "currentStage": state.current_stage,
            "designTask": state.design_task,
            "schemeRefs": refs,
        })
    except (ConnectionFailure, DocumentTooLarge):
        raise  # the envelope already says these clearly
    except PyMongoError as error:
        log.warning("save of %r failed: %s", username, type(error).__name__)
        raise SaveNotStored("the save was not stored because the database refused a write; "
                            "the previous state is kept, send it again") from error


def saves(db: Database, username: str, limit: int) -> dict[str, Any]:
    """Return the participant's saves, newest first, at most `limit` of them."""
    participant = db[COLLECTION].find_one({"username": username}, {"username": 1, "revision": 1})
    if participant is None:
        raise NotFound(f"participant {username!r} does not exist")
    return {"username": username, "saves": history.list_saves(db, participant, limit)}


def saved_state(db: Database, entry_id: ObjectId) -> dict[str, Any]:
    """Return one past state in the shape of /paint/start."""
    found = history.find_entry(db, entry_id)
    if found is None:
        raise NotFound(f"no saved state has id {entry_id}")
    participant, entry = found
    return client_state(db, entry, participant)
