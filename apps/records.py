"""Generation records: one document per POST /generate in the `generations` collection.

A record keeps what was asked (`input`), every step the pipeline took (`steps`, from the
Trace), what the client received (`result`), how long it took and how it ended. Every
image in it is moved to the image store and replaced by `{"sha256", "contentType"}`, so
a record stays small however many images a generation makes, and a researcher fetches
the pictures with GET /images/<sha256>.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError

from agent.errors import BackendError
from apps.record_backlog import RecordBacklog
from apps.trace import Trace
from core.image_store import Image, ImageDecodeError, decode_image, put_image

log = logging.getLogger(__name__)

COLLECTION = "generations"
MAX_TEXT = 64 * 1024  # longer strings are cut: no record may near MongoDB's 16 MB limit
# How base64 of a PNG, JPEG or WebP begins: long strings starting so are images to move out.
_B64_IMAGE_STARTS = ("iVBORw0KGgo", "/9j/", "UklGR")


def create_indexes(db: Database) -> None:
    """Index records for the researcher's queries: per participant and per type, newest first."""
    records = db[COLLECTION]
    records.create_index([("username", ASCENDING), ("createdAt", DESCENDING)], name="username_createdAt")
    records.create_index([("type", ASCENDING), ("createdAt", DESCENDING)], name="type_createdAt")
    records.create_index([("createdAt", DESCENDING)], name="createdAt")


@dataclass(frozen=True)
class GenerationCall:
    """One validated POST /generate: which app and type, for whom, and the checked request."""

    appid: int
    type: int
    username: str | None
    handler: Any  # an apps.registry.GenerationApp
    request: Any


class ImageRefs:
    """Turn values into storable ones, moving every image to the image store."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._stored: dict[str, dict[str, str]] = {}

    def ref(self, image: Image) -> dict[str, str]:
        """Store `image` once and return its reference."""
        key = image.sha256
        if key not in self._stored:
            put_image(self.db, image)
            self._stored[key] = {"sha256": key, "contentType": image.content_type}
        return dict(self._stored[key])

    def convert(self, value: Any, key: str | None = None) -> Any:
        """Return `value` with images replaced by references and other values made BSON-safe."""
        if isinstance(value, Image):
            return self.ref(value)
        if isinstance(value, str):
            return self._string(value, key)
        if isinstance(value, dict):
            return {str(k): self.convert(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.convert(item, key) for item in value]
        if value is None or isinstance(value, (bool, float, datetime, ObjectId)):
            return value
        if isinstance(value, int):
            return value if -(2**63) <= value < 2**63 else str(value)
        return _cut(repr(value))  # an unexpected object: keep it readable, never fail the record

    def _string(self, value: str, key: str | None) -> Any:
        if key == "image" or value.startswith("data:image/") or (
                len(value) >= 256 and value.startswith(_B64_IMAGE_STARTS)):
            try:
                return self.ref(decode_image(value))
            except ImageDecodeError:
                pass
        return _cut(value)


def _cut(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]}…[{len(text) - MAX_TEXT} more characters cut]"


def error_of(exc: BaseException | None) -> dict[str, Any] | None:
    """Return the record's `error` for an exception: the step, a message and the kind."""
    if exc is None:
        return None
    if isinstance(exc, BackendError):
        return {"step": exc.step, "message": _cut(exc.describe()), "kind": type(exc).__name__}
    return {"step": None, "message": _cut(f"{type(exc).__name__}: {exc}"), "kind": type(exc).__name__}


class Recorder:
    """Time one generation and write its record when the block ends, however it ends.

    Use as `with Recorder(db, call, backlog) as rec: rec.result = run(..., rec.trace)`.
    Exceptions pass through unchanged; a record that cannot be written is logged, never
    raised, so storage trouble neither hides the pipeline's error nor takes a participant's
    result. With a `backlog` (apps.record_backlog), a record the database could not take
    waits there for a later write instead of being lost.
    """

    def __init__(self, db: Database, call: GenerationCall, backlog: RecordBacklog | None = None) -> None:
        self.db = db
        self.call = call
        self.backlog = backlog
        self.trace = Trace()
        self.result: dict[str, Any] | None = None
        self.record_id = ObjectId()
        self._created = datetime.now(timezone.utc)
        self._started = time.monotonic()
        self._ended: tuple[datetime, float] | None = None
        self._error: dict[str, Any] | None = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Fixed now, so a record written later still tells when the generation ran.
        self._ended, self._error = (datetime.now(timezone.utc), time.monotonic()), error_of(exc)
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
            self.db[COLLECTION].insert_one(self._document(self._error))
        except DuplicateKeyError:
            pass  # an earlier try was stored though its answer never came back

    def build(self, exc: BaseException | None) -> dict[str, Any]:
        """Return the record document for a generation that ended with `exc` (None: success)."""
        return self._document(error_of(exc))

    def _document(self, error: dict[str, Any] | None) -> dict[str, Any]:
        refs = ImageRefs(self.db)
        call = self.call
        finished, ended = self._ended or (datetime.now(timezone.utc), time.monotonic())
        return {
            "_id": self.record_id,
            "createdAt": self._created,
            "finishedAt": finished,
            "durationMs": round((ended - self._started) * 1000),
            "appid": call.appid,
            "type": call.type,
            "username": call.username,
            "input": self._input(refs),
            "steps": refs.convert(self.trace.entries),
            "result": refs.convert(self.result),
            "status": "failed" if error is not None else "ok",
            "error": error,
        }

    def _input(self, refs: ImageRefs) -> Any:
        try:
            return refs.convert(self.call.handler.describe(self.call.type, self.call.request))
        except ConnectionFailure:
            raise  # not a describe() bug: the database is away, and the whole record waits
        except Exception:  # a describe() bug must not cost the steps and the result
            log.exception("could not describe the input of generation %s", self.record_id)
            return None
