"""Images in GridFS, stored once each under the SHA-256 of their bytes.

Generation records and saved sessions keep only the hash (a record: an `ImageRef`); the
bytes live here, so no document nears MongoDB's 16 MB limit and an image mentioned a
thousand times is stored once. Images arrive as data URIs or raw base64; only PNG, JPEG
and WebP are accepted.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal, get_args

import gridfs
from pydantic import ConfigDict, Field, PlainSerializer, PlainValidator, SerializationInfo, WithJsonSchema
from pydantic_core import PydanticCustomError
from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from core import embedded_store
from core.db import Document

BUCKET = "fs"  # GridFS's default bucket (the only one the embedded store handles)
_KEY = re.compile(r"[0-9a-f]{64}")  # a SHA-256 in lower-case hex
# The key of a stored image as the API takes it (either case).
Sha256 = Annotated[str, Field(pattern="^[0-9a-fA-F]{64}$",
                              description="The SHA-256 of an image's bytes, 64 hex characters.")]

# The kinds of image accepted, as their bytes tell them apart.
ImageType = Literal["image/png", "image/jpeg", "image/webp"]
PNG, JPEG, WEBP = get_args(ImageType)
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"\xff\xd8\xff", JPEG),
)

class _KeyLocks:
    """One lock per key, kept only while a thread holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold the lock of `key` for the block."""
        with self._guard:
            lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if not users[0]:
                    del self._locks[key]


# Writers of one hash must take turns (a half-written image's chunks are cleared before a
# rewrite, which must not hit another writer's); writers of different hashes must not, or
# with the database gone every save would wait out each earlier one's timeout in a queue.
_writing = _KeyLocks()


class ImageDecodeError(ValueError):
    """The value is not a base64 PNG, JPEG or WebP image (or a data URI of one)."""


@dataclass(frozen=True)
class Image:
    """Decoded image bytes and their content type."""

    data: bytes
    content_type: str

    @cached_property  # hashed once however often the key is asked for
    def sha256(self) -> str:
        """The hex SHA-256 of the bytes: the image's key in the store."""
        return hashlib.sha256(self.data).hexdigest()

    def b64(self) -> str:
        """Return the bytes as raw base64, the form the client shows."""
        return base64.b64encode(self.data).decode("ascii")

    def data_uri(self) -> str:
        """Return the image as a data URI."""
        return f"data:{self.content_type};base64,{self.b64()}"


def is_key(text: str) -> bool:
    """Return whether `text` has the form of a stored image's key (lower-case hex SHA-256)."""
    return _KEY.fullmatch(text) is not None


def sniff_content_type(data: bytes) -> str | None:
    """Return the MIME type of PNG, JPEG or WebP bytes, else None."""
    for signature, content_type in _SIGNATURES:
        if data.startswith(signature):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    return None


def decode_image(value: str) -> Image:
    """Decode a data URI or raw base64 string into an Image, checking what it really is."""
    if not isinstance(value, str) or not value:
        raise ImageDecodeError("is not an image string")
    payload = value
    if value.startswith("data:"):
        header, sep, payload = value.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ImageDecodeError("is a data URI but not a base64 one")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageDecodeError("is not valid base64") from None
    content_type = sniff_content_type(data)
    if content_type is None:
        raise ImageDecodeError("is not a PNG, JPEG or WebP image")
    return Image(data, content_type)


class ImageRef(Document):
    """An image moved to the image store; fetch it with GET /images/{sha256}."""

    model_config = ConfigDict(extra="forbid")

    sha256: Sha256
    content_type: ImageType


# How an Image leaves a model: raw base64 in an answer (the form the client shows), or, when
# the dump's context holds an `image_sink` (a record being written), the ImageRef the sink
# hands back for it: the image is stored and the record keeps its reference.
def _dump_image(image: Image, info: SerializationInfo) -> Any:
    sink = (info.context or {}).get("image_sink")
    return sink(image) if sink is not None else image.b64()


def _load_sketch(value: Any) -> Image:
    if isinstance(value, Image):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("image_type", "must be a string: a data URI of a PNG, JPEG or WebP image")
    try:
        return decode_image(value)
    except ImageDecodeError as error:
        raise PydanticCustomError("image", str(error)) from None


def _only_images(value: Any) -> Image:
    if not isinstance(value, Image):
        raise PydanticCustomError("image_type", "must be an image")
    return value


_OUT = PlainSerializer(_dump_image)
_B64_SCHEMA = {"type": "string", "contentEncoding": "base64",
               "description": "Raw base64 of an image, without a data: prefix; show it as "
                              "`data:image/jpeg;base64,` + image."}

# The format of a sketch in the OpenAPI document: its bytes are an image, which no pattern says.
IMAGE_FORMAT = "image-data-uri"
# What decode_image reads, as far as a pattern can say it: a base64 data URI's header or none,
# then base64 with padding and white space (which it drops) anywhere, at least 4 digits (the
# shortest signature, JPEG's, is 3 bytes). That the bytes are such an image, the format says.
_SKETCH_PATTERN = r"^(?:data:[^,]*;base64,)?[\s=]*(?:[A-Za-z0-9+/][\s=]*){4,}$"

# An image a client sends: a data URI (or raw base64) of a PNG, JPEG or WebP, decoded once here.
SketchImage = Annotated[Image, PlainValidator(_load_sketch), _OUT, WithJsonSchema(
    {"type": "string", "format": IMAGE_FORMAT, "pattern": _SKETCH_PATTERN,
     "description": "A data URI of a PNG, JPEG or WebP image (`data:image/png;base64,...`; raw "
                    "base64 is accepted too). The decoded bytes must really be such an image."},
    mode="validation")]
# An image the server made (or was sent) and answers as raw base64.
AnswerImage = Annotated[Image, PlainValidator(_only_images), _OUT, WithJsonSchema(_B64_SCHEMA)]


def _sink_image(image: Image, info: SerializationInfo) -> ImageRef:
    return info.context["image_sink"](image)


# An image that only a record keeps: dumped (with an `image_sink`, always) as its ImageRef.
RecordImage = Annotated[Image, PlainValidator(_only_images), PlainSerializer(_sink_image, return_type=ImageRef)]


def _bucket(db: Database) -> gridfs.GridFSBucket:
    return gridfs.GridFSBucket(db, bucket_name=BUCKET)


def create_indexes(db: Database) -> None:
    """Create the GridFS indexes once, as the spec names them, so uploads need not check."""
    db[f"{BUCKET}.chunks"].create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)
    db[f"{BUCKET}.files"].create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])


def put_image(db: Database, image: Image) -> str:
    """Store `image` unless it is already stored; return its SHA-256."""
    key = image.sha256
    with _writing.hold(key):
        if db[f"{BUCKET}.files"].find_one({"_id": key}, {"_id": 1}) is None:
            if embedded_store.serves(db):
                embedded_store.write_gridfs_file(db, BUCKET, key, image.data, image.content_type)
            else:
                try:
                    _bucket(db).upload_from_stream_with_id(key, key, image.data,
                                                           metadata={"contentType": image.content_type})
                except (gridfs.errors.FileExists, DuplicateKeyError):
                    pass  # another server process stored the same bytes first
    return key


def _content_type(info: dict) -> str:
    return (info.get("metadata") or {}).get("contentType") or "application/octet-stream"


def get_image(db: Database, key: str) -> Image | None:
    """Return the stored image with SHA-256 `key`, or None."""
    return StoredImages(db, [key]).get(key)


class StoredImages:
    """Stored images read one at a time: all their files documents in one query, each one's chunks when asked."""

    def __init__(self, db: Database, keys: Iterable[str]) -> None:
        wanted = list(dict.fromkeys(keys))
        self._db = db
        self._files = {info["_id"]: info for info in db[f"{BUCKET}.files"].find({"_id": {"$in": wanted}})} if wanted else {}

    def get(self, key: str) -> Image | None:
        """Return the image `key` if it is one of those asked for and wholly stored, else None."""
        info = self._files.get(key)
        if info is None:
            return None
        # A query per file: nx-27017 finds nothing for $in on fs.chunks.
        chunks = self._db[f"{BUCKET}.chunks"].find({"files_id": key}).sort("n", ASCENDING)
        data = b"".join(chunk["data"] for chunk in chunks)
        return Image(data, _content_type(info)) if len(data) == info["length"] else None


def stored_keys(db: Database, keys: Iterable[str]) -> set[str]:
    """Return which of `keys` are stored, asking the database once for all of them."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return set()
    found = db[f"{BUCKET}.files"].find({"_id": {"$in": wanted}}, {"_id": 1})
    return {doc["_id"] for doc in found}
