"""The MongoDB handle of an app: one pymongo client, opened lazily, shared by all requests.

Production points `MONGO_URI` at a real MongoDB. With it unset the factory starts the
embedded wire-compatible store (core.embedded_store) and hands its URI here, so both
paths run the same pymongo code.

Every write asks for journaled write concern (`j: true`): an acknowledged write is on
disk, so a save the participant was told is stored survives a power loss. A real MongoDB
answers once its journal holds the write; nx-27017 turns `j` into SQLite's
synchronous=FULL, one fsync of its WAL per write (see core.embedded_store).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Annotated

import pymongo
from bson import ObjectId
from flask import Flask, current_app
from pydantic import BaseModel, ConfigDict, WithJsonSchema
from pydantic.alias_generators import to_camel
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ServerSelectionTimeoutError
from pymongo.uri_parser import parse_uri

log = logging.getLogger(__name__)

IndexSetup = Callable[[Database], None]


OBJECT_ID_PATTERN = "^[0-9a-fA-F]{24}$"  # how an ObjectId is written in paths, queries and answers
# An ObjectId as stored, answered by the API's JSON as its 24 hex characters.
Id = Annotated[ObjectId, WithJsonSchema({"type": "string", "pattern": OBJECT_ID_PATTERN,
                                         "description": "A MongoDB ObjectId as 24 hex characters."})]


class Document(BaseModel):
    """A document as the server stores it: fields spelled as stored (camelCase), BSON's own types kept.

    Dumped with `by_alias=True` it is what pymongo writes; validated from what pymongo reads,
    unknown fields are ignored, so older documents still load.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, arbitrary_types_allowed=True,
                              frozen=True)


class MongoStore:
    """A pymongo client and database, with index setup done once the database answers."""

    def __init__(self, uri: str, db_name: str, *, timeout_ms: int = 3000) -> None:
        # Short timeouts so a stopped database becomes a 503 within seconds, not a hang;
        # pymongo reconnects by itself when the database comes back.
        self.client: MongoClient = MongoClient(
            uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=max(timeout_ms * 10, 30_000),
            journal=True,  # acknowledged means durable; `w` stays the URI's (or the server's default)
            connect=False,
        )
        self.db: Database = self.client[db_name]
        self._index_setups: list[IndexSetup] = []
        self._ready = False
        self._lock = threading.Lock()
        self._timeout = timeout_ms / 1000

    def add_indexes(self, setup: IndexSetup) -> None:
        """Register a function that creates indexes; it runs once, on first use."""
        self._index_setups.append(setup)

    def database(self) -> Database:
        """Return the database, creating the registered indexes on the first call that reaches it."""
        if not self._ready:
            # With the database away each try takes the whole timeout: the requests behind it
            # wait for that one try, not for a queue of tries.
            if not self._lock.acquire(timeout=self._timeout):
                raise ServerSelectionTimeoutError("the database did not answer the index set-up")
            try:
                if not self._ready:
                    for setup in self._index_setups:
                        setup(self.db)
                    self._ready = True
            finally:
                self._lock.release()
        return self.db

    def ping(self, timeout: float | None = None) -> bool:
        """Return whether the database answers right now (within `timeout` seconds, if given)."""
        try:
            # pymongo.timeout also bounds server selection, so a dead database fails in `timeout`.
            with pymongo.timeout(timeout):
                self.client.admin.command("ping")
            return True
        except Exception:  # any failure means "not reachable" for a health check
            return False

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def redact(uri: str) -> str:
    """Return `uri` without its credentials, for logs."""
    try:
        hosts = ",".join(f"{host}:{port}" for host, port in parse_uri(uri)["nodelist"])
    except Exception:
        return "mongodb://<unparseable URI>"
    return f"mongodb://{hosts}"


def init_app(app: Flask, uri: str) -> MongoStore:
    """Attach a MongoStore for `uri` to `app`."""
    store = MongoStore(uri, app.config["MONGO_DB"], timeout_ms=app.config["MONGO_TIMEOUT_MS"])
    app.extensions["mongo"] = store
    return store


def get_store() -> MongoStore:
    """Return the current app's MongoStore."""
    return current_app.extensions["mongo"]


def get_db() -> Database:
    """Return the current app's database, ready for use."""
    return get_store().database()
