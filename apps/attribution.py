"""Whose generation it was: every generation record attributed to a participant, with its evidence.

The web client never says in POST /generate who asks (its contract sends `prompts` only),
but a request bears traces of its participant that their sessions bear too. What one
request shows is its `Clues`, kept in its record; strongest first:

- `sketch`: an image in the request (types 1 and 2 send sketches) has the SHA-256 of an
  image in the participant's saves, current or past;
- `texts`: the notes of a sketch in the request (types 1, 2 and 3) are the notes of one of
  their saved sketches;
- `client`: the request comes from the client address (behind TRUSTED_PROXIES the one they
  forward) and User-Agent of the participant's most recent /paint/start or /paint/save,
  made at most ATTRIBUTION_WINDOW seconds before or after; found when the request arrives;
- `task`: the design task of the request (types 0, 1, 2) is one they saved.

`attribute` weighs them. The strongest evidence that names anyone gives the candidates and
each weaker one narrows them as long as it agrees; one candidate left is the participant,
by the method that left one, and more are `ambiguous`, all of them listed: never a guess. A
username in the body (`username`) and a researcher's choice (`manual`) always win, and
nothing changes them afterwards.

What the sessions show is kept as marks, one per sketch image, set of notes and design
task a participant ever saved (`attribution_marks`, unique by kind, key and username),
and their last client (`attribution_clients`). The client sometimes saves a sketch after
the generation it sent it to, so the marks a save adds send the records whose clues they
match to be attributed again (apps.records.reattribute).
"""
from __future__ import annotations

import hashlib
import logging
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, get_args

from flask import current_app, request
from pydantic import Field
from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import BulkWriteError, PyMongoError

from core.db import Document
from core.security import client_address

log = logging.getLogger(__name__)

MARKS = "attribution_marks"
CLIENTS = "attribution_clients"
DUPLICATE_KEY = 11000
MAX_USER_AGENT = 512

MarkKind = Literal["sketch", "texts", "task"]
SKETCH, TEXTS, TASK = get_args(MarkKind)
Method = Literal["username", "manual", "sketch", "texts", "client", "task", "ambiguous", "none"]
# The methods that decide for good: neither a save nor a later look at the evidence changes them.
FIXED = ("username", "manual")
# The evidence, strongest first (the order `attribute` weighs it in).
STRENGTH: tuple[Method, ...] = ("sketch", "texts", "client", "task")


def _normal(text: str) -> str:
    """Return `text` as compared: NFC, white space collapsed, trimmed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def notes_key(notes: Iterable[str]) -> str | None:
    """Return the key of a sketch's notes (their order aside), or None when it has none."""
    kept = sorted(filter(None, (_normal(note) for note in notes if isinstance(note, str))))
    return _key("\n".join(kept)) if kept else None


def task_key(task: str | None) -> str | None:
    """Return the key of a design task, or None for a blank one."""
    text = _normal(task) if isinstance(task, str) else ""
    return _key(text) if text else None


# -- what a request shows ---------------------------------------------------------------------
class ClientSeen(Document):
    """The client a request came from, and the participants whose last start or save it made then."""

    address: str | None
    user_agent: str | None
    candidates: list[str] | None = Field(
        description="Participants whose last /paint/start or /paint/save came from this client within the "
                    "window; null when that could not be looked up")


class Clues(Document):
    """What a generation request shows of its participant, kept in its record."""

    username: str | None = Field(None, description="The username the body sent, if any")
    sketches: list[str] = Field(default_factory=list, description="SHA-256 of each image the request sent")
    texts: list[str] = Field(default_factory=list, description="The key of each sketch's notes")
    task: str | None = Field(None, description="The key of the design task")
    client: ClientSeen | None = None


class Evidence(Document):
    """One method's finding: who it points at and why."""

    method: Method
    candidates: list[str]
    detail: str


class Attribution(Document):
    """Who a generation was for: the participant, the method that decided, the evidence, the candidates."""

    username: str | None = Field(description="The participant; null while ambiguous or unknown")
    method: Method = Field(description="username (sent in the body), manual (set by a researcher), sketch, "
                                       "texts, client or task (the evidence that decided), ambiguous (more "
                                       "than one participant fits) or none (no evidence)")
    evidence: list[Evidence] = Field(default_factory=list, description="Each method's finding, strongest first")
    candidates: list[str] = Field(default_factory=list, description="Who fits: the participant, or all of "
                                                                    "them when ambiguous")

    @classmethod
    def sent(cls, username: str) -> Attribution:
        """Return the attribution of a request whose body named its participant."""
        return cls(username=username, method="username", candidates=[username], evidence=[
            Evidence(method="username", candidates=[username], detail="sent in the request body")])

    @classmethod
    def manual(cls, username: str, at: datetime) -> Attribution:
        """Return a researcher's attribution, set at `at`."""
        return cls(username=username, method="manual", candidates=[username], evidence=[
            Evidence(method="manual", candidates=[username], detail=f"set by a researcher at {at.isoformat()}")])


def client_now() -> tuple[str | None, str | None]:
    """Return the current request's client address and User-Agent."""
    address = client_address()
    agent = request.headers.get("User-Agent")
    return (str(address) if address else None), (agent[:MAX_USER_AGENT] if agent else None)


def clues(db: Database | None, username: str | None, shown: Clues) -> Clues:
    """Return the clues of the current request: what its prompts showed, who sent it and from where.

    Without `db` (the database is away) the client's participants are not looked up.
    """
    if username is not None:
        return shown.model_copy(update={"username": username})
    address, agent = client_now()
    candidates = None
    if address is not None and db is not None:
        window = timedelta(seconds=current_app.config["ATTRIBUTION_WINDOW"])
        now = datetime.now(timezone.utc)
        try:
            seen = db[CLIENTS].find({"address": address, "userAgent": agent,
                                     "at": {"$gte": now - window, "$lte": now + window}}, {"_id": 1})
            candidates = sorted(doc["_id"] for doc in seen)
        except PyMongoError as error:  # the record says so; the other evidence still counts
            log.warning("could not look up the participants of client %s: %s", address, type(error).__name__)
    return shown.model_copy(update={"client": ClientSeen(address=address, user_agent=agent, candidates=candidates)})


# -- weighing the evidence --------------------------------------------------------------------
def _marked(db: Database, kind: MarkKind, keys: Sequence[str], what: str) -> Evidence | None:
    """Return who saved the most of `keys`, or None when nobody saved any."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return None
    found = Counter(doc["username"] for doc in db[MARKS].find({"kind": kind, "key": {"$in": wanted}},
                                                              {"username": 1}))
    if not found:
        return None
    most = max(found.values())
    best = sorted(name for name, count in found.items() if count == most)
    return Evidence(method=kind, candidates=best, detail=f"{most} of {len(wanted)} {what} in their saves")


def _client(seen: ClientSeen | None) -> Evidence | None:
    if seen is None or not seen.candidates:
        return None
    return Evidence(method="client", candidates=seen.candidates,
                    detail=f"their last start or save came from {seen.address} with the same User-Agent")


def weigh(evidence: Sequence[Evidence]) -> Attribution:
    """Return the attribution `evidence` (strongest first) supports: one participant, several, or none."""
    fits: set[str] | None = None
    method: Method = "none"
    for finding in evidence:
        narrowed = set(finding.candidates) if fits is None else fits & set(finding.candidates)
        if not narrowed:
            continue  # it disagrees with stronger evidence, which stands
        if narrowed != fits:
            fits, method = narrowed, finding.method
        if len(fits) == 1:
            break
    if fits is None:
        return Attribution(username=None, method="none", evidence=list(evidence))
    if len(fits) > 1:
        return Attribution(username=None, method="ambiguous", evidence=list(evidence), candidates=sorted(fits))
    (username,) = fits
    return Attribution(username=username, method=method, evidence=list(evidence), candidates=[username])


def attribute(db: Database, found: Clues) -> Attribution:
    """Return the attribution of a generation from its clues and the marks stored now."""
    if found.username is not None:
        return Attribution.sent(found.username)
    evidence = [_marked(db, SKETCH, found.sketches, "sketch images"),
                _marked(db, TEXTS, found.texts, "sketches' notes"),
                _client(found.client),
                _marked(db, TASK, [found.task] if found.task else [], "design tasks")]
    return weigh([finding for finding in evidence if finding is not None])


# -- what sessions show -----------------------------------------------------------------------
class Marks(Document):
    """What one save showed of its participant: the keys of its sketch images, notes and task."""

    sketches: list[str] = Field(default_factory=list)
    texts: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sketches or self.texts or self.tasks)

    def by_kind(self) -> dict[MarkKind, list[str]]:
        """Return the keys under their mark kinds."""
        return {SKETCH: self.sketches, TEXTS: self.texts, TASK: self.tasks}


def mark(db: Database, username: str, marks: Marks) -> None:
    """Store that `username` saved `marks` (again is harmless)."""
    now = datetime.now(timezone.utc)
    docs = [{"kind": kind, "key": key, "username": username, "at": now}
            for kind, keys in marks.by_kind().items() for key in dict.fromkeys(keys)]
    if not docs:
        return
    try:
        db[MARKS].insert_many(docs, ordered=False)
    except BulkWriteError as error:  # the participant saved these before: the marks are there
        if any(e.get("code") != DUPLICATE_KEY for e in error.details.get("writeErrors", [])):
            raise


class Sightings:
    """The clients participants were last seen at, written at most every `refresh` seconds per participant."""

    def __init__(self, refresh: float = 60.0) -> None:
        self.refresh = refresh
        self._last: dict[str, tuple[str | None, str | None, datetime]] = {}

    def saw(self, db: Database, username: str) -> None:
        """Note that the current request of `username` came from its client."""
        address, agent = client_now()
        now = datetime.now(timezone.utc)
        last = self._last.get(username)
        if last is not None and last[:2] == (address, agent) and (now - last[2]).total_seconds() < self.refresh:
            return  # the stored sighting is recent enough for any window
        db[CLIENTS].update_one({"_id": username}, {"$set": {"address": address, "userAgent": agent, "at": now}},
                               upsert=True)
        self._last[username] = (address, agent, now)


def open_to(kind: MarkKind) -> list[Method]:
    """Return the methods of the attributions a new mark of `kind` may change: none stronger, none fixed."""
    return [*STRENGTH[STRENGTH.index(kind):], "ambiguous", "none"]


def create_indexes(db: Database) -> None:
    """Give each mark one document, found by its key; find a client's participants by its address."""
    db[MARKS].create_index([("kind", ASCENDING), ("key", ASCENDING), ("username", ASCENDING)], unique=True,
                           name="kind_key_username")
    db[CLIENTS].create_index([("address", ASCENDING)], name="address")


def as_dict(attribution: Attribution) -> dict[str, Any]:
    """Return `attribution` as stored."""
    return attribution.model_dump(by_alias=True)
