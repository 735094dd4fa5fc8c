"""Participant sessions in MongoDB (`participants` collection), one document per username."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from apps.paint.session_input import SavedState
from apps.paint.stages import NOT_READY, SCHEME_FIELDS
from core.envelope import NotFound

COLLECTION = "participants"


def create_indexes(db: Database) -> None:
    """Make usernames unique, so simultaneous first visits create one participant."""
    db[COLLECTION].create_index([("username", ASCENDING)], unique=True, name="username_unique")


def _new_participant(username: str) -> dict[str, Any]:
    return {
        "username": username,
        "currentStage": NOT_READY,
        "designTask": "",
        **{field: [] for field in SCHEME_FIELDS.values()},
        "createdAt": datetime.now(timezone.utc),
    }


def to_client(doc: dict[str, Any]) -> dict[str, Any]:
    """Return the seven keys the client spreads into its state."""
    return {
        "_id": str(doc["_id"]),
        "username": doc["username"],
        "currentStage": doc.get("currentStage", NOT_READY),
        "designTask": doc.get("designTask", ""),
        **{field: doc.get(field) or [] for field in SCHEME_FIELDS.values()},
    }


def start(db: Database, username: str) -> dict[str, Any]:
    """Return the participant `username`, creating it on first visit."""
    participants = db[COLLECTION]
    try:
        doc = participants.find_one_and_update(
            {"username": username},
            {"$setOnInsert": _new_participant(username)},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError:
        # Two first visits raced and the other one inserted: its document is the one.
        doc = participants.find_one({"username": username})
    return to_client(doc)


def save(db: Database, username: str, state: SavedState) -> None:
    """Store `state` as the participant's current session."""
    result = db[COLLECTION].update_one(
        {"username": username},
        {"$set": {
            "designTask": state.design_task,
            "currentStage": state.current_stage,
            **state.schemes,
            "updatedAt": datetime.now(timezone.utc),
        }},
    )
    if result.matched_count == 0:
        raise NotFound(f"participant {username!r} does not exist; call /paint/start first")
