"""Generation records: what every POST /generate did, kept for the researchers, and the routes that read them.

One document per generation in the `generations` collection (`GenerationRecord`): what
was asked (`input`), every step the pipeline took (`steps`, typed entries that the
pipeline appends to a `Trace` from whatever thread ran the step), what the client
received (`result`), how long it took and how it ended. Images stay `Image` values until
the record is written; then each is stored once in the image store under its SHA-256 and
the record keeps `{"sha256", "contentType"}`, so a record stays small however many images
a generation makes.

A `Recorder` writes the record when the generation ends, however it ends. When MongoDB is
unreachable then, the participant still gets the stimuli and the record waits in a
bounded in-memory `RecordBacklog` (RECORD_BACKLOG) that later generations drain.

GET /generations lists summaries newest first by (createdAt, _id); the `before` cursor is
a record id (the page starts just after it) or an ISO-8601 time (records created strictly
before it). GET /generations/<id> returns one whole record, GET /images/<sha256> an image.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Annotated, Any, Literal

from bson import ObjectId
from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, StringConstraints
from pydantic_core import PydanticCustomError
from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError

from agent.errors import BackendError
from core import validation as v
from core.db import OBJECT_ID_PATTERN, Document, Id, get_db
from core.envelope import BadInput, NotFound, ok
from core.image_store import AnswerImage, Image, get_image, is_key, put_image

log = logging.getLogger(__name__)

COLLECTION = "generations"
MAX_TEXT = 64 * 1024  # longer strings are cut: no record may near MongoDB's 16 MB limit
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_TYPE = 1000
NEWEST_FIRST = [("createdAt", DESCENDING), ("_id", DESCENDING)]
IMMUTABLE = "public, max-age=31536000, immutable"
# Blobs of saved schemes keep the media type their data URI declared (text/html, SVG with
# scripts, ...): opened directly, such a blob must not run as a page of the API's origin.
UNTRUSTED = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'"}

bp = Blueprint("records", __name__)


def _cut(text: Any) -> Any:
    if not isinstance(text, str) or len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]}…[{len(text) - MAX_TEXT} more characters cut]"


LongText = Annotated[str, BeforeValidator(_cut)]


# -- the trace -------------------------------------------------------------------------------
class CheckFailure(Document):
    """One check an answer failed: its name and what was wrong."""

    check: str
    detail: LongText


class LLMStep(Document):
    """One GPT call of a step (successful or not); a retry of the step is an entry of its own."""

    kind: Literal["llm"] = "llm"
    step: str
    template: str | None = None
    prompt: LongText | None = Field(None, description="The prompt sent (a corrective retry's says what was wrong)")
    images: list[str] = Field(default_factory=list, description="SHA-256 of each image sent")
    raw: LongText | None = None
    items: list[LongText] | None = None
    deployment: str | None = None
    latency: float | None = None
    retries: int = 0
    attempt: int = 1
    reason: Literal["correction", "budget"] | None = Field(
        None, description="Why this attempt was made: a corrective retry after failed checks, or a larger "
                          "max_tokens budget after a cut answer; null for the first")
    protocol: Literal["structured", "text"] | None = None
    finish_reason: str | None = None
    max_tokens: int | None = None
    usage: dict[str, Any] | None = Field(None, description="Token usage as the deployment reported it")
    checks: list[str] = Field(default_factory=list, description="The checks the answer's items were put to")
    failed: list[CheckFailure] = Field(default_factory=list, description="The checks that failed")
    error: LongText | None = None


class ImageStep(Document):
    """One image job of a step (successful or not): the WebUI payload, where it ran and what it gave."""

    kind: Literal["image"] = "image"
    step: str
    payload: dict[str, Any]
    instance: str | None = None
    info: dict[str, Any] | None = None
    latency: float | None = None
    queue_wait: float | None = None
    attempts: int | None = None
    errors: list[str] | None = None
    image: AnswerImage | None = None
    error: LongText | None = None


TraceEntry = Annotated[LLMStep | ImageStep, Field(discriminator="kind")]


class Trace:
    """The step entries of one generation, appended from any thread of its pipeline."""

    def __init__(self) -> None:
        self._entries: list[LLMStep | ImageStep] = []
        self._lock = threading.Lock()

    def llm(self, **fields: Any) -> None:
        """Record one LLM call (successful or not)."""
        self._append(LLMStep(**fields))

    def image(self, **fields: Any) -> None:
        """Record one image job (successful or not)."""
        self._append(ImageStep(**fields))

    def _append(self, entry: LLMStep | ImageStep) -> None:
        with self._lock:
            self._entries.append(entry)

    @property
    def entries(self) -> list[LLMStep | ImageStep]:
        """A copy of the entries so far, in the order they finished."""
        with self._lock:
            return list(self._entries)


# -- the record ------------------------------------------------------------------------------
class RecordError(Document):
    """How a failed generation ended: the step that failed, a message and the exception's class."""

    step: str | None
    message: LongText
    kind: str

    @classmethod
    def of(cls, exc: BaseException | None) -> RecordError | None:
        """Return the error of a generation that raised `exc` (None when it succeeded)."""
        if exc is None:
            return None
        if isinstance(exc, BackendError):
            return cls(step=exc.step, message=exc.describe(), kind=type(exc).__name__)
        return cls(step=None, message=f"{type(exc).__name__}: {exc}", kind=type(exc).__name__)


class GenerationSummary(Document):
    """What GET /generations lists of one generation: when, which app and type, for whom, how it ended."""

    id: Id = Field(alias="_id")
    created_at: datetime
    finished_at: datetime
    duration_ms: int = Field(ge=0)
    appid: int
    type: int
    username: str | None
    status: Literal["ok", "failed"]
    error: RecordError | None


class GenerationRecord(GenerationSummary):
    """One generation as stored in `generations`; images in it are references to the image store."""

    input: dict[str, Any] | None = Field(description="The checked prompts, in the client's field names")
    steps: list[TraceEntry]
    result: dict[str, Any] | None = Field(description="The answer's data exactly as the client received it")


class GenerationPage(Document):
    """A page of GET /generations: summaries newest first, and the `before` of the next page."""

    items: list[GenerationSummary]
    next: Id | None = Field(description="`before` of the next page; null at the end")


# The fields a summary reads from a stored record.
SUMMARY_FIELDS = tuple(info.alias for info in GenerationSummary.model_fields.values())


@dataclass(frozen=True)
class GenerationCall:
    """One validated POST /generate: which app and type, for whom, and the checked prompts."""

    appid: int
    type: int
    username: str | None
    handler: Any  # the app's handler (apps.generate.GenerationApp)
    prompts: BaseModel


class _ImageSink:
    """Collect the images of one record while it is dumped, handing back a reference to each."""

    def __init__(self) -> None:
        self.images: dict[str, Image] = {}

    def __call__(self, image: Image) -> dict[str, str]:
        self.images.setdefault(image.sha256, image)
        return {"sha256": image.sha256, "contentType": image.content_type}


class Recorder:
    """Time one generation and write its record when the block ends, however it ends.

    Use as `with Recorder(db, call, backlog) as rec: rec.result = run(..., rec.trace)`.
    Exceptions pass through unchanged; a record that cannot be written is logged, never
    raised, so storage trouble neither hides the pipeline's error nor takes a participant's
    result. With a `backlog`, a record the database could not take waits there instead of
    being lost.
    """

    def __init__(self, db: Database, call: GenerationCall, backlog: RecordBacklog | None = None) -> None:
        self.db = db
        self.call = call
        self.backlog = backlog
        self.trace = Trace()
        self.result: BaseModel | None = None
        self.record_id = ObjectId()
        self._created = datetime.now(timezone.utc)
        self._started = time.monotonic()
        self._ended: tuple[datetime, float] | None = None
        self._error: RecordError | None = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Fixed now, so a record written later still tells when the generation ran.
        self._ended, self._error = (datetime.now(timezone.utc), time.monotonic()), RecordError.of(exc)
        try:
            self.write()
        except Exception as error:
            if self.backlog is not None and isinstance(error, ConnectionFailure):
                self.backlog.keep(self)  # the database is away, not the record's fault: later
            else:  # the record is lost, not the request: tell the operator
                log.exception("could not write generation record %s (app %s, type %s)",
                              self.record_id, self.call.appid, self.call.type)
            return
        if self.backlog is not None:
            self.backlog.flush()  # the database answers: write records that waited for it

    def write(self) -> None:
        """Insert the record of the ended generation; a copy already stored by an earlier try counts."""
        try:
            self.db[COLLECTION].insert_one(self.document(self._error))
        except DuplicateKeyError:
            pass  # an earlier try was stored though its answer never came back

    def document(self, error: RecordError | None) -> dict[str, Any]:
        """Return the record as stored, after storing each of its images once in the image store."""
        sink = _ImageSink()
        context = {"image_sink": sink}  # dumping does no I/O: the images are stored after it
        finished, ended = self._ended or (datetime.now(timezone.utc), time.monotonic())
        call = self.call
        record = GenerationRecord(
            id=self.record_id, created_at=self._created, finished_at=finished,
            duration_ms=round((ended - self._started) * 1000), appid=call.appid, type=call.type,
            username=call.username, input=call.prompts.model_dump(by_alias=True, context=context),
            steps=self.trace.entries,
            result=None if self.result is None else self.result.model_dump(by_alias=True, context=context),
            status="failed" if error is not None else "ok", error=error)
        document = record.model_dump(by_alias=True, context=context)
        for image in sink.images.values():
            put_image(self.db, image)
        return document


class RecordBacklog:
    """Records the database could not take, waiting in memory (bounded, thread-safe) until it answers.

    A record holds its images until written (a few MB each), hence the bound. The next
    generation whose own record is written writes up to `batch` waiting ones after it, so
    the backlog drains as the study goes on without a resident thread. A record dropped
    because the backlog is full, or still waiting when the process exits, is logged at
    ERROR with its id.
    """

    def __init__(self, limit: int, batch: int = 4) -> None:
        self.limit, self.batch = max(1, limit), max(1, batch)
        self._waiting: deque[Recorder] = deque()
        self._lock = threading.Lock()
        atexit.register(self.close)

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)

    def keep(self, record: Recorder) -> None:
        """Queue `record` for a later write, dropping the oldest one when full."""
        with self._lock:
            dropped = self._waiting.popleft() if len(self._waiting) >= self.limit else None
            self._waiting.append(record)
            waiting = len(self._waiting)
        log.warning("database unavailable: generation record %s kept in memory (%d waiting)",
                    record.record_id, waiting)
        if dropped is not None:
            log.error("generation record %s lost: more than %d records waited for the database "
                      "(raise RECORD_BACKLOG)", dropped.record_id, self.limit)

    def flush(self) -> int:
        """Write up to `batch` waiting records, oldest first; return how many were written."""
        with self._lock:
            taken = [self._waiting.popleft() for _ in range(min(self.batch, len(self._waiting)))]
        written = 0
        for index, record in enumerate(taken):
            try:
                record.write()
            except ConnectionFailure:
                with self._lock:  # down again: put the rest back, in order, for the next time
                    self._waiting.extendleft(reversed(taken[index:]))
                break
            except Exception:  # cannot be written however long it waits: say so and drop it
                log.exception("generation record %s could not be written and is dropped", record.record_id)
                continue
            written += 1
        if written:
            log.info("wrote %d generation record(s) that waited for the database", written)
        return written

    def close(self) -> None:
        """Try once more to write what waits, then log every record still waiting as lost."""
        atexit.unregister(self.close)
        while self._waiting and self.flush():
            pass
        with self._lock:
            ids = [str(record.record_id) for record in self._waiting]
            self._waiting.clear()
        if ids:
            log.error("exiting with %d generation record(s) never written: %s", len(ids), ", ".join(ids))


def init_app(app: Flask) -> None:
    """Register the record routes and indexes of `app` and give it its backlog."""
    app.extensions["record_backlog"] = RecordBacklog(app.config["RECORD_BACKLOG"])
    app.extensions["mongo"].add_indexes(create_indexes)
    app.register_blueprint(bp)


def get_backlog() -> RecordBacklog:
    """Return the current app's backlog of records waiting for the database."""
    return current_app.extensions["record_backlog"]


def create_indexes(db: Database) -> None:
    """Index records for the researcher's queries: per participant and per type, newest first."""
    records = db[COLLECTION]
    records.create_index([("username", ASCENDING), ("createdAt", DESCENDING)], name="username_createdAt")
    records.create_index([("type", ASCENDING), ("createdAt", DESCENDING)], name="type_createdAt")
    records.create_index([("createdAt", DESCENDING)], name="createdAt")


# -- reading records back --------------------------------------------------------------------
def _cursor(raw: Any) -> ObjectId | datetime:
    if not isinstance(raw, str):
        raise PydanticCustomError("cursor", "must be a record id or an ISO-8601 time")
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
        raise PydanticCustomError("cursor", "must be a record id or an ISO-8601 time between years 1 and "
                                  "9999 UTC") from None


RecordId = Annotated[str, StringConstraints(pattern=OBJECT_ID_PATTERN)]


class PageQuery(v.Body):
    """The query of GET /generations."""

    username: v.Username | None = None
    type: Annotated[int, Field(ge=0, le=MAX_TYPE), v.FROM_QUERY] | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT), v.FROM_QUERY] = DEFAULT_LIMIT
    before: Annotated[ObjectId | datetime, PlainValidator(_cursor, json_schema_input_type=RecordId | datetime),
                      Field(description="A record id (the page starts after it) or an ISO-8601 time "
                                        "(records created strictly before it; UTC when no offset is given)")] | None = None

    model_config = ConfigDict(arbitrary_types_allowed=True)


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
    summaries = [{key: doc.get(key) for key in SUMMARY_FIELDS} for doc in items]
    return {"items": summaries, "next": str(items[-1]["_id"]) if more else None}


@bp.get("/generations")
def list_generations():
    """Return a page of record summaries, newest first, and the cursor of the next page."""
    return ok(list_page(get_db(), v.parse_query(PageQuery, request.args)))


@bp.get("/generations/<record_id>")
def get_generation(record_id: str):
    """Return one whole generation record."""
    key = v.object_id(record_id, "a record")
    doc = get_db()[COLLECTION].find_one({"_id": key})
    if doc is None:
        raise NotFound(f"no generation has the id {key}")
    return ok(doc)  # the API's JSON writes its ids and times


@bp.get("/images/<key>")
def get_stored_image(key: str):
    """Serve the bytes of a stored image, cacheable for good under its hash."""
    key = key.lower()
    if not is_key(key):
        raise BadInput("sha256", "must be 64 hex characters")
    image = get_image(get_db(), key)
    if image is None:
        raise NotFound(f"no image has the SHA-256 {key}")
    response = Response(image.data, content_type=image.content_type)
    response.headers["Cache-Control"] = IMMUTABLE
    response.headers.update(UNTRUSTED)
    response.set_etag(key)
    return response.make_conditional(request)
