"""The fuzzing harness: one app on simulated backends, requests built from the document, and checks.

A `Call` is one request (a documented operation with a concrete path, query and body);
`FuzzEnv.check` sends it and asserts the properties every answer must have: no 5xx, JSON
in the envelope, the documented status and schema, and nothing written when refused.
"""
from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import Flask
from flask.testing import FlaskClient
from hypothesis import strategies as st
from pymongo import MongoClient
from pymongo.database import Database
from werkzeug.test import TestResponse

from apps.openapi.generate_schemas import IMAGE_FORMAT
from core.backends import close_app_backends
from core.factory import create_app
from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator
from tests.generate_fixtures import SIM_KEY, SKETCH, Sims, backend_settings
from tests.helpers import PNG_1PX
from tests.openapi_support import DOC, check_spec, documented, inline, is_envelope, validator
from tests.schema_strategies import SchemaStrategies

MAX_BODY = 64 * 1024
MAX_SAVE_BODY = 1024 * 1024
IMAGES = [SKETCH, PNG_1PX, "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe0fuzz").decode()]
SCHEMAS = SchemaStrategies({IMAGE_FORMAT: st.sampled_from(IMAGES)})
NO_BODY = object()  # a request without a body (None is the JSON body `null`)


@dataclass
class Call:
    """One request of a documented operation."""

    path: str  # the document's template, e.g. /generations/{record_id}
    method: str
    params: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    body: Any = NO_BODY  # a JSON value, or bytes sent as they are
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def url(self) -> str:
        """Return the concrete path, each parameter percent-encoded."""
        url = self.path
        for name, value in self.params.items():
            url = url.replace("{" + name + "}", quote(value, safe=""))
        return url


# nx-27017 lists GridFS as fs_files/fs_chunks, hangs reading those names, and cannot count_documents
# on fs.files; its estimated count works everywhere (and is exact there: SQLite counts rows).
GRIDFS_FILES = "fs.files"
HIDDEN = ("fs_", "system.")
# Every state change of a participant bumps its revision counters (apps.paint.sessions).
REVISIONS = [{"$group": {"_id": None, "seq": {"$sum": "$revisionSeq"}, "rev": {"$sum": "$revision"},
                         "last": {"$max": "$updatedAt"}}}]


def snapshot(db: Database) -> dict[str, Any]:
    """Return a fingerprint of the database: documents per collection and the participants' revisions."""
    names = {name for name in db.list_collection_names() if not name.startswith(HIDDEN)} | {GRIDFS_FILES}
    counts = {name: db[name].estimated_document_count() for name in sorted(names)}
    state: dict[str, Any] = {name: n for name, n in counts.items() if n}  # index setup makes empty ones
    state["participant revisions"] = list(db.participants.aggregate(REVISIONS))
    return state


@dataclass
class FuzzEnv:
    """The app under fuzzing, its direct database handle and its simulators."""

    app: Flask
    client: FlaskClient
    db: Database
    # The database after the last refused call; None when something may have written since.
    known_state: dict[str, Any] | None = None

    def forget(self) -> None:
        """Say that the database may have changed outside `check` (a test's own setup call)."""
        self.known_state = None

    def send(self, call: Call) -> TestResponse:
        """Send `call` and return the answer."""
        data = None
        if isinstance(call.body, bytes):
            data = call.body
        elif call.body is not NO_BODY:
            data = json.dumps(call.body)  # ASCII escapes, so lone surrogates travel as \udXXX
        return self.client.open(call.url(), method=call.method.upper(), query_string=call.query,
                                data=data, content_type=call.content_type if data is not None else None,
                                headers=call.headers)

    def check(self, call: Call) -> TestResponse:
        """Send `call` and assert the properties every answer has; return the answer."""
        before = self.known_state if self.known_state is not None else snapshot(self.db)
        self.known_state = None
        response = self.send(call)
        what = f"{call.method.upper()} {call.url()} {call.query} -> {response.status_code}"
        assert response.status_code < 500, f"{what}: {response.get_data(as_text=True)[:500]}"
        if response.mimetype == "application/json" and call.path != "/openapi.json":
            assert is_envelope(response), f"{what}: not in the envelope"
        check_spec(response, documented(call.path, call.method, response.status_code), what)
        if 400 <= response.status_code < 500:
            after = snapshot(self.db)
            assert after == before, f"{what}: a refused request wrote to the database"
            self.known_state = after  # so the next call need not read it again
        return response


@contextmanager
def fuzz_env(mongo_uri: str, data_dir: Path) -> Iterator[FuzzEnv]:
    """Run an app wired to simulators with instant answers and small body limits, then stop it all."""
    with ExitStack() as stack:  # unwinds in reverse, whatever failed to start
        chat = ChatSimulator(api_key=SIM_KEY, hang_timeout=5.0).start()
        stack.callback(chat.stop)
        sds = []
        for _ in range(2):
            sds.append(SDWebUISimulator().start())
            stack.callback(sds[-1].stop)
        settings = {"TESTING": True, "MONGO_URI": mongo_uri, "MONGO_DB": f"fuzz_{uuid.uuid4().hex[:12]}",
                    "MONGO_TIMEOUT_MS": 2000, "DATA_DIR": str(data_dir), "MAX_CONTENT_LENGTH": MAX_BODY,
                    "SAVE_MAX_CONTENT_LENGTH": MAX_SAVE_BODY, **backend_settings(Sims(chat, sds))}
        app = create_app(settings, env={})
        stack.callback(app.extensions["mongo"].close)
        stack.callback(close_app_backends, app)
        direct = MongoClient(mongo_uri, serverSelectionTimeoutMS=2000)
        stack.callback(direct.close)
        yield FuzzEnv(app, app.test_client(), direct[settings["MONGO_DB"]])


def operation(path: str, method: str) -> dict[str, Any]:
    """Return the document's operation."""
    return DOC["paths"][path][method]


def _parameters(op: dict[str, Any], where: str) -> dict[str, Any]:
    params = [p for p in op.get("parameters", []) if p["in"] == where]
    return {"type": "object", "additionalProperties": False,
            "properties": {p["name"]: p["schema"] for p in params},
            "required": [p["name"] for p in params if p.get("required")]}


def parameter_values(path: str, method: str, where: str) -> st.SearchStrategy[dict[str, str]]:
    """Return a strategy of documented `where` ("query" or "path") parameters, as strings."""
    schema = _parameters(operation(path, method), where)
    check = validator(schema).is_valid
    return SCHEMAS.values(inline(schema), check).map(lambda values: {k: str(v) for k, v in values.items()})


def body_values(path: str, method: str) -> st.SearchStrategy[Any]:
    """Return a strategy of request bodies the document accepts for the operation."""
    schema = operation(path, method)["requestBody"]["content"]["application/json"]["schema"]
    return SCHEMAS.values(inline(schema, repeats=2), validator(schema).is_valid)
