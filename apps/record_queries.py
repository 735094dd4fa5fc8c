"""Reading generation records back: filtered, newest-first pages and single records as JSON.

Pages are ordered by (createdAt, _id), newest first. The `before` cursor is either a
record id (the page starts just after that record) or an ISO-8601 time (the page holds
records created strictly before it); each page names the cursor of the next one.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import DESCENDING
from pymongo.database import Database

from apps.records import COLLECTION
from core import validation as v
from core.envelope import BadInput, NotFound

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_TYPE = 1000
SUMMARY_FIELDS = ("createdAt", "finishedAt", "durationMs", "appid", "type", "username", "status", "error")
NEWEST_FIRST = [("createdAt", DESCENDING), ("_id", DESCENDING)]


@dataclass(frozen=True)
class PageQuery:
    """The checked parameters of GET /generations."""

    username: str | None = None
    type: int | None = None
    limit: int = DEFAULT_LIMIT
    before: ObjectId | datetime | None = None


def _int_param(raw: str, field: str, *, low: int, high: int) -> int:
    try:
        number = int(raw.strip())
    except ValueError:
        raise BadInput(field, "must be an integer") from None
    return v.integer(number, field, low=low, high=high)


def object_id(raw: str, field: str = "id") -> ObjectId:
    """Return the ObjectId written as 24 hex characters in `raw`, or raise BadInput."""
    try:
        return ObjectId(raw)
    except (InvalidId, TypeError):
        raise BadInput(field, "must be a record id of 24 hex characters") from None


def _cursor(raw: str) -> ObjectId | datetime:
    if ObjectId.is_valid(raw):
        return ObjectId(raw)
    try:
        text = raw.strip()
        if text.endswith(("Z", "z")):  # Python 3.10's fromisoformat reads no "Z"; 3.11+ does
            text = text[:-1] + "+00:00"
        moment = datetime.fromisoformat(text)
        # In UTC now: the store keeps UTC, and an offset can push a time past year 1 or 9999.
        return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        raise BadInput("before", "must be a record id or an ISO-8601 time between years 1 and 9999 UTC") from None


def read_page_query(args: Any) -> PageQuery:
    """Return the checked query of GET /generations from the request's `args`."""
    unknown = sorted(set(args) - {"username", "type", "limit", "before"})
    if unknown:
        raise BadInput(unknown[0], "is not a parameter; use username, type, limit or before")
    return PageQuery(
        username=v.username(args["username"]) if "username" in args else None,
        type=_int_param(args["type"], "type", low=0, high=MAX_TYPE) if "type" in args else None,
        limit=_int_param(args["limit"], "limit", low=1, high=MAX_LIMIT) if "limit" in args else DEFAULT_LIMIT,
        before=_cursor(args["before"]) if "before" in args else None,
    )


def _before_filter(db: Database, before: ObjectId | datetime) -> dict[str, Any]:
    if isinstance(before, datetime):
        return {"createdAt": {"$lt": before}}
    anchor = db[COLLECTION].find_one({"_id": before}, {"createdAt": 1})
    if anchor is None:
        raise BadInput("before", f"no generation has the id {before}")
    created = anchor["createdAt"]
    return {"$or": [{"createdAt": {"$lt": created}}, {"createdAt": created, "_id": {"$lt": before}}]}


def list_page(db: Database, query: PageQuery) -> dict[str, Any]:
    """Return `{"items": [record summaries], "next": cursor or None}` for `query`."""
    match: dict[str, Any] = {}
    if query.username is not None:
        match["username"] = query.username
    if query.type is not None:
        match["type"] = query.type
    if query.before is not None:
        match.update(_before_filter(db, query.before))
    found = list(db[COLLECTION].find(match, dict.fromkeys(SUMMARY_FIELDS, 1))
                 .sort(NEWEST_FIRST).limit(query.limit + 1))  # one more tells whether a next page exists
    items = found[:query.limit]
    more = len(found) > query.limit
    summaries = [{"_id": doc["_id"], **{key: doc.get(key) for key in SUMMARY_FIELDS}} for doc in items]
    return {"items": summaries, "next": str(items[-1]["_id"]) if more else None}


def get_record(db: Database, record_id: ObjectId) -> dict[str, Any]:
    """Return the whole record `record_id` (the API's JSON writes its ids and times), or raise NotFound."""
    doc = db[COLLECTION].find_one({"_id": record_id})
    if doc is None:
        raise NotFound(f"no generation has the id {record_id}")
    return doc
