"""Generation records: what every POST /generate did, kept for the researchers, and the routes that read them.

One document per generation in the `generations` collection (`GenerationRecord`): what
was asked (`input`), every step the pipeline took (`steps`, typed entries that the
pipeline appends to a `Trace` from whatever thread ran the step), what the client
received (`result`), how long it took and how it ended. Images stay `Image` values until
the record is written; then each is stored once in the image store under its SHA-256 and
the record keeps `{"sha256", "contentType"}`, so a record stays small however many images
a generation makes.

A `Recorder` writes the record when the generation ends, however it ends. When the
database cannot take it then (unreachable, or refusing writes), the participant still gets
the stimuli, and the record waits on disk: the `RecordJournal` appends it to a file under
DATA_DIR and syncs it before the answer is sent, then writes it to the database once that
answers again, after a restart of the server too.

Each record also says whose generation it was (`participant`, apps.attribution), decided
from its `clues` when it is written and again whenever a later save brings evidence
(`reattribute`); a researcher can set it by hand (PUT /generations/<id>/participant).

GET /generations lists summaries newest first by (createdAt, _id), of one participant
with `username`; the `before` cursor is a record id (the page starts just after it) or an
ISO-8601 time (records created strictly before it). GET /generations/<id> returns one whole
record, GET /images/<sha256> an image.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Annotated, Any, Literal, get_args

from bson import ObjectId
from bson.errors import InvalidDocument
from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, StringConstraints
from pydantic_core import PydanticCustomError
import pymongo
from pymongo import ASCENDING, DESCENDING, WriteConcern
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from agent.errors import BackendError, Cancelled
from apps import attribution
from apps.attribution import Attribution, Clues, Marks
from core import json_codec
from core import validation as v
from core.db import OBJECT_ID_PATTERN, Document, Id, get_db
from core.envelope import BadInput, NotFound, failure_of, ok
from core.image_store import Image, ImageRef, RecordImage, get_image, is_key, put_image
from core.security import researcher

log = logging.getLogger(__name__)

COLLECTION = "generations"
JOURNAL_DIR = "record-journal"  # under DATA_DIR: one journal per database, <MONGO_DB>.jsonl
MAX_TEXT = 64 * 1024  # longer strings are cut: no record may near MongoDB's 16 MB limit
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_TYPE = 1000
# Seconds the database may take for what a generation can do without (its queued and running
# marks, the evidence looked up as it arrives): a database that hangs delays it no longer.
ASIDE_TIMEOUT = 1.0
MARK = WriteConcern(w=1)  # the queued and running marks: acknowledged, not journaled (no fsync each)
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
# When an entry's call ran, measured on the monotonic clock (records before these fields have neither).
STARTED = "Seconds from the generation's start to when this call began (null if not measured)"
FINISHED = "Seconds from the generation's start to when this call ended and was recorded"


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
    started: float | None = Field(None, description=STARTED)
    finished: float | None = Field(None, description=FINISHED)


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
    image: RecordImage | None = None
    error: LongText | None = None
    started: float | None = Field(None, description=STARTED)
    finished: float | None = Field(None, description=FINISHED)


TraceEntry = Annotated[LLMStep | ImageStep, Field(discriminator="kind")]
StepListener = Callable[[str, str, "LLMStep | ImageStep | None"], None]


class Trace:
    """The step entries of one generation, appended from any thread of its pipeline.

    `origin` is the monotonic time the generation started (the Recorder's); an entry's
    `started` and `finished` are seconds after it: `started` from the monotonic time the
    caller says its call began, `finished` read when the entry is appended. `on_step`, when
    given, hears of each step as it starts (`begin`) and of each entry as it is appended:
    `on_step(step, "started" | "finished" | "failed", entry or None)`.
    """

    def __init__(self, origin: float | None = None, on_step: StepListener | None = None) -> None:
        self.origin = time.monotonic() if origin is None else origin
        self.on_step = on_step
        self._entries: list[LLMStep | ImageStep] = []
        self._lock = threading.Lock()

    def begin(self, step: str) -> None:
        """Say that `step` starts (its attempts are entries of their own)."""
        if self.on_step is not None:
            self.on_step(step, "started", None)

    def llm(self, *, started: float | None = None, **fields: Any) -> None:
        """Record one LLM call (successful or not) that began at monotonic time `started`."""
        self._append(LLMStep(**fields, **self._span(started)))

    def image(self, *, started: float | None = None, **fields: Any) -> None:
        """Record one image job (successful or not) that began at monotonic time `started`."""
        self._append(ImageStep(**fields, **self._span(started)))

    def _span(self, started: float | None) -> dict[str, float | None]:
        finished = time.monotonic()
        return {"started": None if started is None else started - self.origin, "finished": finished - self.origin}

    def _append(self, entry: LLMStep | ImageStep) -> None:
        with self._lock:
            self._entries.append(entry)
        if self.on_step is not None:
            self.on_step(entry.step, "failed" if entry.error else "finished", entry)

    @property
    def entries(self) -> list[LLMStep | ImageStep]:
        """A copy of the entries so far, in the order they finished."""
        with self._lock:
            return list(self._entries)


# -- the record ------------------------------------------------------------------------------
class RecordError(Document):
    """How a failed generation ended: the step that failed, a message, the exception's class, the envelope's code."""

    step: str | None
    message: LongText
    kind: str
    code: int | None = Field(None, description="The envelope code it was answered with (null in older records)")

    @classmethod
    def of(cls, exc: BaseException | None) -> RecordError | None:
        """Return the error of a generation that raised `exc` (None when it succeeded)."""
        if exc is None:
            return None
        _, code, _ = failure_of(exc)
        if isinstance(exc, BackendError):
            return cls(step=exc.step, message=exc.describe(), kind=type(exc).__name__, code=code)
        return cls(step=None, message=f"{type(exc).__name__}: {exc}", kind=type(exc).__name__, code=code)


# A generation is a job (apps.jobs), and its record says where the job is: queued -> running ->
# succeeded | failed | cancelled.
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = get_args(Status)
ENDED = (SUCCEEDED, FAILED, CANCELLED)
OLD_SUCCEEDED = "ok"  # what records said of a success before generations were jobs


def status_of(failure: BaseException | None) -> Status:
    """Return how a generation that raised `failure` (None: nothing) ended."""
    if failure is None:
        return SUCCEEDED
    return CANCELLED if isinstance(failure, Cancelled) else FAILED


class GenerationSummary(Document):
    """What GET /generations lists of one generation: when, which app and type, for whom, how it ended."""

    id: Id = Field(alias="_id")
    created_at: datetime
    started_at: datetime | None = Field(None, description="When its pipeline started; null while queued")
    finished_at: datetime | None = Field(description="When it ended; null while queued or running")
    duration_ms: int | None = Field(ge=0, description="From created to finished; null until it ends")
    appid: int
    type: int
    username: str | None = Field(description="The username the request's body sent (the web client sends none)")
    participant: Attribution | None = Field(description="Whose generation it was, and how that is known; null "
                                                        "only while the record is being written")
    status: Status
    error: RecordError | None


class GenerationRecord(GenerationSummary):
    """Everything one POST /generate did, as stored in `generations`; every image in it is an ImageRef."""

    input: dict[str, Any] | None = Field(description="The checked prompts, in the client's field names")
    clues: Clues = Field(description="What the request showed of its participant: the evidence `participant` "
                                     "is weighed from")
    steps: list[TraceEntry] = Field(description="One entry per GPT call and per image job, in the order they "
                                                "finished")
    result: dict[str, Any] | None = Field(description="The answer's data as the client received it")
    alive_at: float | None = Field(None, description="While queued or running: when the server running it last "
                                                     "said it still does, in seconds since 1970 (apps.jobs)")


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
    clues: Clues | None = None  # None: only the username (a call made outside a request)


class _ImageSink:
    """Collect the images of one record while it is dumped, handing back a reference to each."""

    def __init__(self) -> None:
        self.images: dict[str, Image] = {}

    def __call__(self, image: Image) -> ImageRef:
        self.images.setdefault(image.sha256, image)
        return ImageRef(sha256=image.sha256, content_type=image.content_type)


@dataclass(frozen=True)
class StoredRecord:
    """A generation record as stored, and the images its references point at."""

    document: dict[str, Any]
    images: list[Image]

    @property
    def record_id(self) -> ObjectId:
        """The record's _id, which makes writing it twice harmless."""
        return self.document["_id"]

    def store(self, db: Database) -> None:
        """Store each image once, then the record (over the one stored when it was queued), attributed.

        Writing it again, or after a later state, is harmless: the same fields are set again.
        """
        for image in self.images:
            put_image(db, image)
        # A record kept by a server older than attribution has no clues: only its username.
        clues = Clues.model_validate(self.document.get("clues") or {"username": self.document.get("username")})
        participant = attribution.attribute(db, clues)
        # Replaced whole, not $set: nx-27017 stores a datetime written by $set as a string (and gives an
        # upserted document its filter's ObjectId as a string). A researcher's attribution stays.
        stored = db[COLLECTION].find_one({"_id": self.record_id}, {"participant": 1})
        kept = (stored or {}).get("participant")
        chosen = kept if kept and kept.get("method") in attribution.FIXED else attribution.as_dict(participant)
        whole = {**self.document, "participant": chosen}
        try:
            if stored is None:
                db[COLLECTION].insert_one(whole)
            else:
                db[COLLECTION].replace_one({"_id": self.record_id}, whole)
        except DuplicateKeyError:  # stored meanwhile by another try
            db[COLLECTION].replace_one({"_id": self.record_id}, whole)
        # A save that brought evidence while this was weighed found no record to update: look again.
        _settle(db, self.record_id, clues, participant)

    def to_line(self) -> bytes:
        """Return the record as one line of the journal, its images' bytes included."""
        images = [{"contentType": image.content_type, "data": image.data} for image in self.images]
        return json_codec.dumps_document({"record": self.document, "images": images}).encode("utf-8") + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> StoredRecord:
        """Return the record of a line written by `to_line`."""
        entry = json_codec.loads_document(line)
        record = entry["record"]
        if record.get("status") == OLD_SUCCEEDED:  # kept by a server older than jobs
            record["status"] = SUCCEEDED
        return cls(record, [Image(image["data"], image["contentType"]) for image in entry["images"]])


class Recorder:
    """Time one generation and write its record as it goes: queued, running, and when the block ends, however.

    Use as `rec = Recorder(db, call, journal); rec.queued()`, then `with rec: rec.result =
    run(..., rec.trace)`: entering the block marks it running. Exceptions pass through
    unchanged; a record that cannot be written is logged, never raised, so storage trouble
    neither hides the pipeline's error nor takes a participant's result. The queued and
    running states are best effort (the record of the end holds everything); with a
    `journal`, a record of the end that the database cannot take now waits there (on disk,
    before the answer is sent) instead of being lost.
    """

    def __init__(self, db: Database, call: GenerationCall, journal: RecordJournal | None = None, *,
                 on_step: StepListener | None = None) -> None:
        self.db = db
        self.call = call
        self.journal = journal
        self.result: BaseModel | None = None
        self.record_id = ObjectId()
        self._created = datetime.now(timezone.utc)
        self._started = time.monotonic()
        self.trace = Trace(self._started, on_step)  # so every step's times count from the request's start
        self._running_at: datetime | None = None
        self._ended: tuple[datetime, float] | None = None
        self._error: RecordError | None = None

    def queued(self) -> None:
        """Store the record as queued, attributed, so it can be looked up before it runs."""
        if self.journal is not None and self.journal.backlog:
            return  # the database takes no records now: the end waits in the journal with the rest
        try:
            with pymongo.timeout(ASIDE_TIMEOUT):
                # Unjournaled, as the running mark: the record of the end, journaled, holds it all.
                self.stored(QUEUED).store(self.db.with_options(write_concern=MARK))
        except PyMongoError as error:
            log.warning("generation %s: its queued record was not stored (%s); its end will be",
                        self.record_id, type(error).__name__)

    @property
    def running_since(self) -> datetime | None:
        """When the pipeline started (the block was entered), or None while queued."""
        return self._running_at

    @property
    def finished_at(self) -> datetime | None:
        """When the pipeline ended (the block was left), as the record says, or None before."""
        return self._ended[0] if self._ended else None

    def __enter__(self) -> Recorder:
        self._running_at = datetime.now(timezone.utc)  # stored with the end (a $set would write it as text)
        if self.journal is not None and self.journal.backlog:
            return self
        try:
            with pymongo.timeout(ASIDE_TIMEOUT):
                self.db[COLLECTION].with_options(write_concern=MARK).update_one(
                    {"_id": self.record_id, "status": QUEUED}, {"$set": {"status": RUNNING}})
        except PyMongoError as error:
            log.debug("generation %s: not marked running: %s", self.record_id, type(error).__name__)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Fixed now, so a record written later still tells when the generation ran.
        self._ended, self._error = (datetime.now(timezone.utc), time.monotonic()), RecordError.of(exc)
        record = None
        try:
            record = self.stored(status_of(exc), self._error)
            record.store(self.db)
        except Exception as error:
            if self.journal is not None and record is not None and isinstance(error, PyMongoError):
                self.journal.keep(record)  # the database's trouble, not the record's: it waits on disk
            else:  # the record is lost, not the request: tell the operator
                log.exception("could not write generation record %s (app %s, type %s)",
                              self.record_id, self.call.appid, self.call.type)
            return
        if self.journal is not None:
            self.journal.wake()  # the database answers: records waiting for it can go now

    def stored(self, status: Status, error: RecordError | None = None) -> StoredRecord:
        """Return the record in `status` as stored, with the images it refers to (no I/O)."""
        sink = _ImageSink()
        context = {"image_sink": sink}  # dumping does no I/O: the images are stored after it
        ended = status in ENDED
        finished, end = self._ended or (datetime.now(timezone.utc), time.monotonic())
        call = self.call
        record = GenerationRecord(
            id=self.record_id, created_at=self._created, started_at=self._running_at,
            finished_at=finished if ended else None,
            duration_ms=round((end - self._started) * 1000) if ended else None, appid=call.appid,
            type=call.type, username=call.username, participant=None,
            input=call.prompts.model_dump(by_alias=True, context=context),
            clues=call.clues or Clues(username=call.username),
            steps=self.trace.entries,
            result=None if self.result is None else self.result.model_dump(by_alias=True, context=context),
            status=status, error=error, alive_at=None if ended else time.time())
        return StoredRecord(record.model_dump(by_alias=True, context=context), list(sink.images.values()))


@contextmanager
def _flocked(file: IO[bytes], blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on `file` for the block; yield False when `blocking` is off and another holds it."""
    try:
        fcntl.flock(file, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        yield False
        return
    try:
        yield True
    finally:
        fcntl.flock(file, fcntl.LOCK_UN)


def _lines(path: Path, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """Yield each line of `path` between byte offsets `start` and `end`, with the offset just after it."""
    with open(path, "rb") as journal:
        journal.seek(start)
        while start < end:
            line = journal.readline(end - start)
            start += len(line)
            yield start, line


def _sync_directory(path: Path) -> None:
    """Make the entries of directory `path` durable (a new file's name, not only its bytes)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class RecordJournal:
    """Generation records the database could not take, in a file on disk until it takes them.

    `keep` appends a record as one line of extended JSON (`StoredRecord.to_line`) and syncs
    the file before it returns, so the record outlives a crash or a power loss. While
    records wait, a thread of the journal writes them oldest first (`replay`) every `retry`
    seconds, and at once when `wake` says the database answered; the file is emptied as
    soon as the database took all it held, and an app that starts with records waiting
    starts the thread. A record is written at most once however often it is tried: the
    database refuses a second copy of its _id. Appends and the emptying hold a flock on the
    file and one replay runs at a time (a flock on `<database>.lock` beside it), so the
    threads and a second process on the same DATA_DIR (a `flask` command) can share it.
    """

    def __init__(self, path: Path, database: Callable[[], Database], retry: float) -> None:
        self.path, self.retry = path, retry
        self._database = database
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    def keep(self, record: StoredRecord) -> None:
        """Append `record` and sync it to disk, and have it written once the database answers."""
        try:
            self._append(record.to_line())
        except OSError:
            log.exception("generation record %s lost: it could not be kept in %s", record.record_id, self.path)
            return
        log.warning("the database did not take generation record %s: kept in the journal %s until it does",
                    record.record_id, self.path)
        self.start()

    def _append(self, line: bytes) -> None:
        """Add `line` at the end of the file and sync it (and, for a new file, its directory)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a+b") as journal, _flocked(journal):
            end = journal.seek(0, os.SEEK_END)
            if end:
                journal.seek(end - 1)
                if journal.read(1) != b"\n":
                    line = b"\n" + line  # the last append was cut short by a crash: keep it off this line
            journal.write(line)
            journal.flush()
            os.fsync(journal.fileno())
        if new:
            _sync_directory(self.path.parent)

    def replay(self) -> int:
        """Write the waiting records to the database, oldest first, and empty the file once it took them all.

        Return how many were written; raise the database's error when it fails (the records
        stay). A line that is no record (cut short by a crash as it was appended, so never
        answered) is skipped, and so is a record the database can never hold, both logged.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+b") as lock, _flocked(lock, blocking=False) as alone:
            if not alone:
                return 0  # another thread or process replays, to the end of the file
            written, offset = 0, 0
            while (end := self._end_unless_done(offset)) is not None:
                db = self._database()
                for offset, line in _lines(self.path, offset, end):
                    if self._closed.is_set():
                        return written
                    written += self._write(db, line, offset)
            return written

    def _end_unless_done(self, offset: int) -> int | None:
        """Return where the file ends now, or None, after emptying it, when everything before `offset` is all it holds."""
        try:
            journal = open(self.path, "r+b")
        except FileNotFoundError:
            return None
        with journal, _flocked(journal):
            end = journal.seek(0, os.SEEK_END)
            if offset < end:
                return end
            if end:
                journal.truncate(0)
                os.fsync(journal.fileno())
            return None

    def _write(self, db: Database, line: bytes, offset: int) -> int:
        """Store the record of one line; return 1, or 0 when it is skipped."""
        try:
            record = StoredRecord.from_line(line)
        except (ValueError, KeyError, TypeError):
            log.error("skipped the line ending at byte %d of %s: not a whole record (cut short by a crash)",
                      offset, self.path)
            return 0
        try:
            record.store(db)
        except InvalidDocument:
            log.exception("generation record %s can never be stored and is dropped", record.record_id)
            return 0
        return 1

    def waiting(self) -> int:
        """Return how many records the file holds (some may be written already, if a replay was cut short)."""
        try:
            with open(self.path, "rb") as journal:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: journal.read(1 << 20), b""))
        except FileNotFoundError:
            return 0

    @property
    def backlog(self) -> bool:
        """Whether records wait for the database: it did not take the last ones, so spare it what can be spared."""
        return self._holds_records()

    def _holds_records(self) -> bool:
        """Return whether the file holds anything (without reading it)."""
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def start(self) -> None:
        """Start the thread that writes the waiting records, unless it runs already or none waits."""
        with self._thread_lock:
            if self._thread is None and not self._closed.is_set() and self._holds_records():
                self._thread = threading.Thread(target=self._drain, name="record-journal", daemon=True)
                self._thread.start()

    def wake(self) -> None:
        """Say that the database answers: records waiting are tried now, not at the next retry."""
        self._wake.set()

    def _drain(self) -> None:
        """Replay until nothing waits or the journal closes, trying again every `retry` seconds."""
        while not self._closed.is_set():
            self._wake.clear()
            try:
                written = self.replay()
            except ConnectionFailure as error:
                log.debug("records in %s still wait for the database: %s", self.path, error)
            except PyMongoError as error:  # it answers but refuses: the operator should know
                log.warning("the database refuses the records in %s (%s); trying again in %ss",
                            self.path, error, self.retry)
            except Exception:
                log.exception("could not write the records waiting in %s; trying again in %ss", self.path, self.retry)
            else:
                if written:
                    log.info("wrote %d generation record(s) that waited for the database", written)
            with self._thread_lock:
                if self._closed.is_set() or not self._holds_records():
                    self._thread = None
                    return
            self._wake.wait(self.retry)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and say how many records wait; they stay in the file for the next start."""
        self._closed.set()
        self._wake.set()
        with self._thread_lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        waiting = self.waiting()
        if waiting:
            log.warning("%d generation record(s) wait in %s for the database; the next start writes them",
                        waiting, self.path)


def init_app(app: Flask) -> None:
    """Register the record routes and indexes of `app`, and open its journal, writing what waits in it."""
    store = app.extensions["mongo"]
    path = Path(app.config["DATA_DIR"]) / JOURNAL_DIR / f"{app.config['MONGO_DB']}.jsonl"
    journal = RecordJournal(path, store.database, app.config["RECORD_RETRY"])
    app.extensions["record_journal"] = journal
    store.add_indexes(create_indexes)
    app.register_blueprint(bp)
    waiting = journal.waiting()
    if waiting:
        log.info("%d generation record(s) wait in %s: writing them once the database answers", waiting, path)
        journal.start()


def get_journal() -> RecordJournal:
    """Return the current app's journal of records waiting for the database."""
    return current_app.extensions["record_journal"]


def create_indexes(db: Database) -> None:
    """Index records for the researcher's queries (per participant and per type, newest first) and by clue."""
    records = db[COLLECTION]
    records.create_index([("participant.username", ASCENDING), ("createdAt", DESCENDING)],
                         name="participant_createdAt")
    records.create_index([("type", ASCENDING), ("createdAt", DESCENDING)], name="type_createdAt")
    records.create_index([("createdAt", DESCENDING)], name="createdAt")
    for clue in CLUE_FIELDS.values():
        records.create_index([(clue, ASCENDING)], name=clue.replace(".", "_"))
    records.create_index([("status", ASCENDING)], name="status")
    adopt_unattributed(db)
    records.update_many({"status": OLD_SUCCEEDED}, {"$set": {"status": SUCCEEDED}})


# -- whose generation it was -----------------------------------------------------------------
# Where a record keeps the keys each kind of mark matches.
CLUE_FIELDS = {attribution.SKETCH: "clues.sketches", attribution.TEXTS: "clues.texts",
               attribution.TASK: "clues.task"}


def _settle(db: Database, record_id: ObjectId, clues: Clues, was: Attribution) -> bool:
    """Attribute a stored record again from the marks there are now; return whether it changed."""
    now = attribution.attribute(db, clues)
    if now == was:
        return False
    # Unless a researcher set it meanwhile.
    found = db[COLLECTION].update_one({"_id": record_id, "participant.method": {"$nin": list(attribution.FIXED)}},
                                      {"$set": {"participant": attribution.as_dict(now)}})
    if found.modified_count:
        log.info("generation %s is now attributed to %s (%s)", record_id, now.username or now.candidates, now.method)
    return bool(found.modified_count)


def reattribute(db: Database, marks: Marks) -> int:
    """Attribute again the records whose clues match `marks` (a save's new ones); return how many changed."""
    clauses = [{CLUE_FIELDS[kind]: {"$in": keys}, "participant.method": {"$in": attribution.open_to(kind)}}
               for kind, keys in marks.by_kind().items() if keys]
    if not clauses:
        return 0
    changed = 0
    for doc in db[COLLECTION].find({"$or": clauses}, {"clues": 1, "participant": 1}):
        changed += _settle(db, doc["_id"], Clues.model_validate(doc["clues"]),
                           Attribution.model_validate(doc["participant"]))
    return changed


def reattribute_all(db: Database) -> int:
    """Attribute again every record that neither a username nor a researcher decided; return how many changed."""
    changed = 0
    for doc in db[COLLECTION].find({"participant.method": {"$nin": list(attribution.FIXED)}},
                                   {"clues": 1, "participant": 1}):
        changed += _settle(db, doc["_id"], Clues.model_validate(doc["clues"]),
                           Attribution.model_validate(doc["participant"]))
    return changed


def adopt_unattributed(db: Database) -> None:
    """Attribute the records written before attribution existed: by the username they were sent, if any."""
    for doc in db[COLLECTION].find({"participant": {"$exists": False}}, {"username": 1}):
        username = doc.get("username")
        found = Attribution.sent(username) if username else attribution.weigh([])
        db[COLLECTION].update_one({"_id": doc["_id"], "participant": {"$exists": False}},
                                  {"$set": {"participant": attribution.as_dict(found),
                                            "clues": Clues(username=username).model_dump(by_alias=True)}})


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
                      Field(description="A record id (the page starts after it; an id that no record has "
                                        "is refused, 400) or an ISO-8601 time (records created strictly "
                                        "before it; UTC when no offset is given)")] | None = None

    model_config = ConfigDict(arbitrary_types_allowed=True)


def _before_filter(db: Database, before: ObjectId | datetime) -> dict[str, Any]:
    if isinstance(before, datetime):
        return {"createdAt": {"$lt": before}}
    anchor = db[COLLECTION].find_one({"_id": before}, {"createdAt": 1})
    if anchor is None:
        raise BadInput("before", f"no generation has the id {before}")
    created = anchor["createdAt"]
    return {"$or": [{"createdAt": {"$lt": created}}, {"createdAt": created, "_id": {"$lt": before}}]}


def of_participant(username: str | None) -> dict[str, Any]:
    """Return the filter of the records attributed to `username` (None: to nobody, ambiguous or unknown)."""
    return {"participant.username": username}


def list_page(db: Database, query: PageQuery) -> dict[str, Any]:
    """Return `{"items": [record summaries], "next": cursor or None}` for `query`."""
    match: dict[str, Any] = {}
    if query.username is not None:
        match.update(of_participant(query.username))
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


# The keys of an ImageRef as a record stores it, which take an image's place in a result.
IMAGE_REF_KEYS = {info.alias or name for name, info in ImageRef.model_fields.items()}


def answered(db: Database, result: Any) -> Any:
    """Return a record's `result` as the client received it: each ImageRef read back as raw base64."""
    if isinstance(result, dict):
        if set(result) == IMAGE_REF_KEYS:
            image = get_image(db, result["sha256"])
            if image is None:
                raise NotFound(f"the stored image {result['sha256']} of this result is missing")
            return image.b64()
        return {key: answered(db, value) for key, value in result.items()}
    if isinstance(result, list):
        return [answered(db, value) for value in result]
    return result


@bp.get("/generations")
@researcher
def list_generations():
    """Return a page of record summaries, newest first, and the cursor of the next page."""
    return ok(list_page(get_db(), v.parse_query(PageQuery, request.args)))


@bp.get("/generations/<record_id>")
@researcher
def get_generation(record_id: str):
    """Return one whole generation record."""
    key = v.object_id(record_id, "a record")
    doc = get_db()[COLLECTION].find_one({"_id": key})
    if doc is None:
        raise NotFound(f"no generation has the id {key}")
    return ok(doc)  # the API's JSON writes its ids and times


class ParticipantBody(v.Body):
    """The body of PUT /generations/<id>/participant."""

    username: v.Username | None = Field(description="The participant the generation was for; null gives it back "
                                                    "to the evidence")


@bp.put("/generations/<record_id>/participant")
@researcher
def set_participant(record_id: str):
    """Attribute one generation by hand (method manual), or with null by its evidence again."""
    key = v.object_id(record_id, "a record")
    body = v.body(ParticipantBody)
    db = get_db()
    doc = db[COLLECTION].find_one({"_id": key}, {"clues": 1})
    if doc is None:
        raise NotFound(f"no generation has the id {key}")
    clues = Clues.model_validate(doc["clues"])
    chosen = (Attribution.manual(body.username, datetime.now(timezone.utc)) if body.username is not None
              else attribution.attribute(db, clues))
    db[COLLECTION].update_one({"_id": key}, {"$set": {"participant": attribution.as_dict(chosen)}})
    log.info("generation %s attributed by hand to %s", key, body.username)
    return ok(chosen.model_dump(by_alias=True))


@bp.get("/images/<key>")
@researcher
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
