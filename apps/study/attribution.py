"""Which participant a generation record was for, as the dashboard reads it: the one place that knows.

The web client sends no username to /generate, so records are being given a `participant`
field (`{"username", "method", "evidence", "candidates"}`) saying whom a generation was for
and how that was found. Records written before it name only the request's `username`.
Until every record has the field, both are read here and nowhere else: `generations_of`
finds a participant's records and `unattributed` those of no one; `participant_of` and
`method_of` read one record's.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pymongo import ASCENDING
from pymongo.database import Database

from apps.records import COLLECTION

# The method of a record written before the field: its username came in the request body.
REQUEST_USERNAME = "username"
UNATTRIBUTED = "none"
# The fields `participant_of` and `method_of` read, for a projection.
FIELDS = {"participant": 1, "username": 1}


def _belongs_to(username: str) -> dict[str, Any]:
    return {"$or": [{"participant.username": username},
                    {"participant": {"$exists": False}, "username": username}]}


def generations_of(db: Database, username: str, *, type_: int | None = None,
                   fields: dict[str, int] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the records of `username`'s generations (of one type, if given), oldest first."""
    match = _belongs_to(username)
    if type_ is not None:
        match["type"] = type_
    yield from db[COLLECTION].find(match, fields).sort([("createdAt", ASCENDING), ("_id", ASCENDING)])


def unattributed(db: Database) -> list[dict[str, Any]]:
    """Return the records attributed to no participant, with the fields `method_of` reads."""
    # Sorted out here: nx-27017 answers a match of null beside an `$exists` wrongly (none found).
    return [record for record in db[COLLECTION].find({}, FIELDS) if participant_of(record) is None]


def participant_of(record: dict[str, Any]) -> str | None:
    """Return the username a record's generation was for, or None when it is attributed to no one."""
    participant = record.get("participant")
    if isinstance(participant, dict):
        return participant.get("username")
    return record.get("username")


def method_of(record: dict[str, Any]) -> str:
    """Return how a record's participant was found (`UNATTRIBUTED` when it was not)."""
    participant = record.get("participant")
    if isinstance(participant, dict):
        return participant.get("method") or UNATTRIBUTED
    return REQUEST_USERNAME if record.get("username") else UNATTRIBUTED


