"""Property-based fuzzing of every route with schemathesis, driven by the document the server serves.

schemathesis reads /openapi.json and makes the requests of every operation: the documented
examples, its coverage cases (boundaries, missing and wrong fields, undocumented methods)
and random data, valid and not. Every answer passes its checks (no 5xx; a documented status,
media type, body and headers; valid data accepted, invalid data refused) and ours: JSON in
the envelope, no body where none is documented, unknown query parameters refused, and
nothing written to the database when refused (4xx). What no schema generates (lone
surrogates, NaN, huge numbers, deep nesting, `$` and dotted keys, bytes that are not UTF-8,
wrong content types) is the tables below, sent at every spot of the documented examples and
at random spots of generated bodies. Deterministic, and bounded for CI.
"""
from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from bson import ObjectId
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient
from pymongo.database import Database
from schemathesis.checks import (
    content_type_conformance, missing_required_header, negative_data_rejection, not_a_server_error,
    positive_data_acceptance, response_headers_conformance, response_schema_conformance, status_code_conformance,
    unsupported_method,
)
from schemathesis.core import NotSet

from apps import jobs
from apps.paint.pipelines.contract import MAX_COUNT
from apps.paint.sessions import SCHEME_FIELDS
from core.backends import close_app_backends
from core.factory import create_app
from core.image_store import IMAGE_FORMAT
from core.validation import MAX_DEPTH
from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator
from tests.helpers import PNG_1PX, PROMPTS, SIM_KEY, SKETCH, Sims, backend_settings, body, save_body, scheme
from tests.openapi_support import check_response, conforms, operations, request_schema, schema_accepts

# --- What no schema generates: values, keys, bodies, content types and parameters, as data.

OPERATORS = [{"$ne": ""}, {"$gt": ""}, {"$regex": ".*"}, {"$where": "sleep(1000)"}, {"$exists": True},
             {"$in": ["alice"]}, {"$ne": None}, {"$set": {"username": "x"}}]


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"k": [value]}
    return value


# Sent by json.dumps: the floats as NaN and Infinity, the lone surrogates as \udXXX escapes.
HOSTILE = [*OPERATORS, None, True, False, 0, -1, 1.5, 6.0, 2**63, -(2**63) - 1, 10**30, float("nan"),
           float("inf"), float("-inf"), "", " ", "\t\n\u3000", "\x00", "\ud800", "a\udfffb", "\udc00$.\ud800",
           "$where", "a.b", [], {}, [[]], "null", "0", "💡" * 200, "x" * 129, "x" * 10_000, "x" * 70_000,
           "x" * 1_100_000, _nested(30), _nested(60), _nested(200), "data:image/png;base64,AAAA",
           "data:image/png,iVBORw0K", "data:text/html;base64,PGI+", "not base64!", base64.b64encode(b"GIF89a").decode()]
HOSTILE_KEYS = ["$where", "$ne", "a.b", "$where.x\x00", "\x00", "\ud800", "", "username", "__proto__", "未知"]
# The sweep: each of these at every spot of every documented example, and the keys in every object.
SWEEP_VALUES = [None, "", 6.0, 2**63, float("nan"), float("inf"), "\ud800", "a\udfffb", {"$ne": ""}, "x" * 70_000]
SWEEP_KEYS = ["$where.x\x00", "\ud800"]  # refused by opaque storage, ignored elsewhere; refused anywhere
BROKEN = [
    b"", b"null", b"[]", b'"alice"', b"{", b"}", b"\xff\xfe\x00", b"[" * 50_000 + b"]" * 50_000,
    b'{"username": NaN}', b'{"username": "a", "x": Infinity}', b'{"username": -Infinity}',
    b'{"username": "\\ud800"}', b'{"username": "a\\u0000"}', b'{"username": "\\\\ud800"}',
    b'{"username": "\xed\xa0\x80"}',  # a surrogate encoded as if UTF-8 could hold one
    b'\xef\xbb\xbf{"username": "bom"}', '{"username": "utf16"}'.encode("utf-16"),
    b'{"username": "alice", "username": {"$ne": ""}}', b'{"username": 1' + b"0" * 5000 + b"}",
]
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "text/plain",
                 "application/x-www-form-urlencoded", "application/vnd.api+json", "multipart/form-data"]
SWEEP_QUERY = ["", " ", "\x00", "-1", "0", "+1", "1e3", "٥", "9" * 30, "true", "x" * 5000, "{\"$ne\": \"\"}",
               "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2024-02-30", "0" * 24, "f" * 64,
               "$ne", "a/b", "%2F", ".."]
SWEEP_PATH = ["", " ", "0" * 23, "0" * 25, "g" * 24, "F" * 64, "..", "a/b", "%00", "\x00", "x" * 5000, "💡", "{}"]
UNKNOWN_QUERY = ["x", "$ne", "username[$ne]", "a.b", "Username", "limit ", "\x00", "未知"]

# The sketches a client sends (format image-data-uri): data URIs and raw base64 of PNG, JPEG and WebP.
IMAGES = [SKETCH, PNG_1PX, "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe0fuzz").decode(),
          "data:image/webp;base64," + base64.b64encode(b"RIFF\x0c\x00\x00\x00WEBPVP8 fuzz").decode()]
schemathesis.openapi.format(IMAGE_FORMAT, st.sampled_from(IMAGES))


def bounded(examples: int) -> settings:
    """Return reproducible settings of `examples` examples, with no time limit per example."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# --- The app under fuzzing, and the database fingerprint that shows whether a request wrote.

MAX_BODY = 64 * 1024
MAX_SAVE_BODY = 1024 * 1024
# nx-27017 lists GridFS as fs_files/fs_chunks, hangs reading those names, and cannot count_documents
# on fs.files; its estimated count works everywhere (and is exact there: SQLite counts rows).
GRIDFS_FILES = "fs.files"
HIDDEN = ("fs_", "system.")
# Every state change of a participant bumps its revision counters (apps.paint.history).
REVISIONS = [{"$group": {"_id": None, "seq": {"$sum": "$revisionSeq"}, "rev": {"$sum": "$revision"},
                         "last": {"$max": "$updatedAt"}}}]


def snapshot(db: Database) -> dict[str, Any]:
    """Return a fingerprint of the database: documents per collection and the participants' revisions."""
    names = {name for name in db.list_collection_names() if not name.startswith(HIDDEN)} | {GRIDFS_FILES}
    counts = {name: db[name].estimated_document_count() for name in sorted(names)}
    state: dict[str, Any] = {name: n for name, n in counts.items() if n}  # index setup makes empty ones
    state["participant revisions"] = list(db.participants.aggregate(REVISIONS))
    return state


def in_the_envelope(ctx, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Check that a JSON answer (but the document itself) is {success, data, code, message}."""
    media = response.headers.get("content-type", [""])[0]
    if media.startswith("application/json") and case.operation.path != "/openapi.json":
        answer = response.json()
        assert isinstance(answer, dict) and set(answer) == {"success", "data", "code", "message"}, answer


def no_undocumented_body(ctx, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Check that an answer whose documented response has no content has no body."""
    documented = case.operation.responses.find_by_status_code(response.status_code)
    if documented is not None and not documented.definition.get("content"):
        assert not response.content, f"a {response.status_code} with a body, where none is documented"


def unknown_query_refused(ctx, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Check that a query naming a parameter the operation lacks is refused (where it takes any)."""
    unknown = set(case.query or {}) - {parameter.name for parameter in case.operation.query}
    if unknown and len(case.operation.query):
        assert response.status_code == 400, f"unknown query parameters {sorted(unknown)} accepted"


# What every answer must be; a generated case also knows whether its data is valid.
DOCUMENTED = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              response_headers_conformance, in_the_envelope, no_undocumented_body, unknown_query_refused]
GENERATED = [*DOCUMENTED, positive_data_acceptance, negative_data_rejection, missing_required_header,
             unsupported_method]


@dataclass
class FuzzEnv:
    """The app under fuzzing, its direct database handle, and the database as it was last seen."""

    app: Flask
    client: FlaskClient
    db: Database
    # The database after the last refused call; None when something may have written since.
    known_state: dict[str, Any] | None = None

    def forget(self) -> None:
        """Say that the database may have changed outside `check` (a test's own setup call)."""
        self.known_state = None

    def check(self, case: schemathesis.Case, checks: list = DOCUMENTED, **sent: Any) -> schemathesis.Response:
        """Send `case` to the app (`sent` may replace its body or add headers), run `checks`, return the answer.

        A refused request (4xx) must leave the database as it was.
        """
        before = self.known_state if self.known_state is not None else snapshot(self.db)
        self.known_state = None
        # Buffered: the test client then closes what the app streams (a file), as a server would.
        response = case.call(app=self.app, buffered=True, **sent)
        if response.status_code == 202:  # a job: its writes are done before the next call's snapshot
            submitted = self.app.extensions[jobs.EXTENSION].get(ObjectId(response.json()["data"]["id"]))
            assert submitted is not None and submitted.wait(30), "a submitted job did not end"
        case.validate_response(response, checks=checks, transport_kwargs={"app": self.app, **sent})
        if 400 <= response.status_code < 500:
            after = snapshot(self.db)
            assert after == before, f"{case.method} {case.formatted_path}: a refused request wrote to the database"
            self.known_state = after  # so the next call need not read it again
        return response


def _from_loopback(wsgi_app: Any) -> Any:
    """Give every request the loopback address that schemathesis's WSGI calls leave out (a server always sets one)."""
    def call(environ: dict[str, Any], start_response: Any) -> Any:
        environ.setdefault("REMOTE_ADDR", "127.0.0.1")
        return wsgi_app(environ, start_response)
    return call


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
        config = {"TESTING": True, "MONGO_URI": mongo_uri, "MONGO_DB": f"fuzz_{uuid.uuid4().hex[:12]}",
                  "MONGO_TIMEOUT_MS": 2000, "DATA_DIR": str(data_dir), "MAX_CONTENT_LENGTH": MAX_BODY,
                  "SAVE_MAX_CONTENT_LENGTH": MAX_SAVE_BODY, **backend_settings(Sims(chat, sds))}
        app = create_app(config, env={})
        app.wsgi_app = _from_loopback(app.wsgi_app)
        stack.callback(app.extensions["mongo"].close)
        stack.callback(close_app_backends, app)
        stack.callback(jobs.close_app, app)  # the jobs POST /jobs started end before what they use closes
        direct = MongoClient(mongo_uri, serverSelectionTimeoutMS=2000)
        stack.callback(direct.close)
        yield FuzzEnv(app, app.test_client(), direct[config["MONGO_DB"]])


@pytest.fixture(scope="module")
def env(mongo_uri, tmp_path_factory):
    """The app under fuzzing, with a participant, saves and a generation (and its images) to find."""
    with fuzz_env(mongo_uri, tmp_path_factory.mktemp("fuzz")) as made:
        made.client.post("/paint/start", json={"username": "seed"})
        for name in ("a", "b"):
            made.client.post("/paint/save", json=save_body("seed", rapid=[scheme(name)]))
        assert made.client.post("/generate", json=body(1, PROMPTS[1], username="seed")).status_code == 200
        yield made


# --- The document, as the server serves it, loaded into schemathesis.

CONFIG = {
    "suppress-health-check": ["all"],
    "generation": {"mode": "all", "deterministic": True, "database": "none", "max-examples": 20},
    # Valid data may name nothing (404); a participant is always made and a generation always runs.
    "checks": {"positive_data_acceptance": {"expected-statuses": ["200", "404"]},
               "negative_data_rejection": {"expected-statuses": ["4xx"]}},
    "operations": [
        {"include-path": ["/paint/start", "/generate"],
         "checks": {"positive_data_acceptance": {"expected-statuses": ["200"]}}},
        # Each valid /generate runs a whole pipeline and stores images: fewer of those.
        {"include-path": "/generate", "generation": {"max-examples": 10}},
    ],
}


def served_schema() -> schemathesis.BaseSchema:
    """Load what GET /openapi.json answers (an app without a database serves it alike), then close the app.

    Loaded at collection, so that each operation is a test of its own; requests go to `env`'s app.
    As a dict rather than from the URL, which would make schemathesis skip the route serving it.
    """
    app = create_app({"TESTING": True, "MONGO_URI": "mongodb://127.0.0.1:9", "MONGO_DB": "unused"}, env={})
    try:
        document = app.test_client().get("/openapi.json").get_json()
    finally:
        jobs.close_app(app)
        close_app_backends(app)
        app.extensions["mongo"].close()
    return schemathesis.openapi.from_dict(document, config=schemathesis.Config.from_dict(CONFIG))


SCHEMA = served_schema()
# The body tables send POST bodies; PUT /generations/{id}/participant is fuzzed by the schemathesis test
# below, and its refusals are in tests/test_attribution.py. POST /jobs reads its body as /generate does
# (apps.generate.read_call), so the tables of /generate cover it (and tests/test_jobs.py compares them).
POSTS = [path for path, method, op in operations(SCHEMA.raw_schema)
         if method == "post" and "requestBody" in op and path != "/jobs"]
GETS = [path for path, method, op in operations(SCHEMA.raw_schema) if method == "get" and op.get("parameters")]


def operation(path: str, method: str = "GET") -> schemathesis.APIOperation:
    """Return the document's operation."""
    return SCHEMA[path][method.upper()]


# --- What the document says in words rather than in schemas.

def _too_many_stimuli(value: Any) -> bool:
    """Return whether a /generate body of type 3 asks for more stimuli in all than the server makes.

    A rule across two fields (len(selectedSchemes) x num), which the document states in its
    description rather than as JSON Schema branches; the model checks it.
    """
    prompts = value.get("prompts") if isinstance(value, dict) and value.get("type") == 3 else None
    if not isinstance(prompts, dict) or not isinstance(prompts.get("selectedSchemes"), list):
        return False
    num = prompts.get("num")
    return isinstance(num, int) and len(prompts["selectedSchemes"]) * num > MAX_COUNT


def _unknown_cursor(env: FuzzEnv, case: schemathesis.Case) -> bool:
    """Return whether a /generations query pages `before` an id that names no generation."""
    before = (case.query or {}).get("before") if case.operation.path == "/generations" else None
    if not isinstance(before, str) or not ObjectId.is_valid(before):  # else a date-time
        return False
    return env.db.generations.find_one({"_id": ObjectId(before)}) is None


def _height(value: Any) -> int:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return 1 + max(map(_height, children), default=-1)


def document_accepts(path: str, value: Any, method: str = "post") -> bool:
    """Return whether the document accepts `value` as the body of `method path`, its rules in words included.

    On top of the schema (and conforms()'s integers and Unicode): a saved scheme nests at most
    MAX_DEPTH levels, which StorableValue's description says and JSON Schema cannot.
    """
    if not conforms(value, request_schema(path, method)):
        return False
    saved = value["data"]["designSchemes"] if path == "/paint/save" else {}
    schemes = [scheme for stage in SCHEME_FIELDS for scheme in saved.get(stage) or ()]  # the others are ignored
    return all(_height(scheme) <= MAX_DEPTH for scheme in schemes)


def _too_large(path: str, value: Any) -> bool:
    """Return whether `value` sent as JSON is over the fuzzed app's body limit for `path` (413)."""
    return len(json.dumps(value).encode()) > (MAX_SAVE_BODY if path == "/paint/save" else MAX_BODY)


def refused_in_words(env: FuzzEnv, case: schemathesis.Case) -> tuple[int, str] | None:
    """Return the status and message start refusing schema-valid `case` where a rule in words forbids it."""
    path = case.operation.path
    if request_schema(path, case.operation.method) is not None and not isinstance(case.body, (bytes, NotSet)):
        if _too_large(path, case.body):  # read before anything else
            return 413, ""
        if not document_accepts(path, case.body, case.operation.method.lower()):
            return 400, ""
        if path == "/generate" and _too_many_stimuli(case.body):
            return 400, "prompts.num: "
    if _unknown_cursor(env, case):
        return 400, "before: "
    return None


def expect(path: str, value: Any, response: schemathesis.Response, accepted: bool) -> None:
    """Assert that a body the document accepts got an accepting status, and one it refuses a 4xx."""
    status = response.status_code
    if accepted and _too_large(path, value):
        assert status == 413, f"{path} took a body over its limit: {status}"
    elif accepted and path == "/generate" and _too_many_stimuli(value):
        assert status == 400 and response.json()["message"].startswith("prompts.num: "), response.json()
    elif accepted:
        assert status in ({200, 404} if path == "/paint/save" else {200}), f"{path} refused {value!r:.300}"
    else:
        assert 400 <= status < 500, f"{path} accepted a body the document refuses: {value!r:.300}"


# --- Every operation, as schemathesis makes the requests.

# POST /jobs reads its body with /generate's code (apps.generate.read_call) and each valid one runs a
# whole pipeline: schemathesis sends /generate its cases, and tests/test_jobs.py checks that /jobs
# refuses the same bodies the same way.
@pytest.mark.fuzz  # about two minutes: its own suite (-m fuzz), which .ci/run runs
@SCHEMA.exclude(operation_id="submitJob").parametrize()
def test_every_operation_answers_as_the_document_says(case, env):
    """Examples, coverage cases and random data, valid and not, of every documented operation."""
    rule = refused_in_words(env, case) if case.meta is not None and case.meta.generation.mode.is_positive else None
    if rule is None:
        env.check(case, GENERATED)
    else:
        response = env.check(case, [check for check in GENERATED if check is not positive_data_acceptance])
        status, message = rule
        assert response.status_code == status and response.json()["message"].startswith(message), response.json()


@pytest.mark.parametrize("path,method", [("/paint/save", "post"), ("/paint/history", "get")])
def test_valid_requests_of_a_started_participant_succeed(env, path, method):
    @bounded(25)
    @given(case=operation(path, method).as_strategy())
    def run(case):
        if refused_in_words(env, case) is not None:
            return  # the test above checks those
        username = case.body["username"] if method == "post" else case.query["username"]
        assert env.client.post("/paint/start", json={"username": username}).status_code == 200
        env.forget()
        assert env.check(case, GENERATED).status_code == 200

    run()


LOOKUPS = {"/paint/history/{entry_id}": ("entry_id", "session_history"),
           "/generations/{record_id}": ("record_id", "generations"), "/images/{key}": ("key", "fs.files")}


@pytest.mark.parametrize("path", sorted(LOOKUPS))
def test_what_exists_is_found(env, path):
    name, collection = LOOKUPS[path]
    values = [str(doc["_id"]) for doc in env.db[collection].find({}, {"_id": 1}).limit(4)]
    assert values, f"the seed made nothing that {path} finds"
    for value in values + [value.upper() for value in values if path == "/images/{key}"]:
        found = env.check(operation(path).Case(path_parameters={name: value}))
        assert found.status_code == 200
    if path == "/images/{key}":
        tag = found.headers["etag"][0]
        cached = env.check(operation(path).Case(path_parameters={name: value}, headers={"If-None-Match": tag}))
        assert cached.status_code == 304


# --- The tables: hostile values at every spot of the examples and of generated bodies.

def spots(value: Any, at: tuple = ()) -> list[tuple]:
    """Return the path of every value inside `value` (dict keys and list indices), `value` itself first."""
    found = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            found += spots(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += spots(item, (*at, index))
    return found


def _at(value: Any, spot: tuple) -> Any:
    for step in spot:
        value = value[step]
    return value


def mutate(body: Any, spot: tuple, action: str, value: Any = None, key: str = "") -> Any:
    """Return a copy of `body` with the value at `spot` replaced or dropped, or (an object) given `key`."""
    changed = copy.deepcopy(body)
    if action == "add" and isinstance(_at(changed, spot), dict):
        _at(changed, spot)[key] = value
    elif not spot:
        return value if action == "replace" else changed
    elif action == "drop":
        del _at(changed, spot[:-1])[spot[-1]]
    else:
        _at(changed, spot[:-1])[spot[-1]] = value
    return changed


def sweep(example: Any) -> list[Any]:
    """Return `example` with each sweep value at each spot, and with each sweep key in each object."""
    damaged = [mutate(example, spot, "replace", value) for spot in spots(example)[1:] for value in SWEEP_VALUES]
    return damaged + [mutate(example, spot, "add", 1, key) for spot in spots(example) for key in SWEEP_KEYS
                      if isinstance(_at(example, spot), dict)]


def examples(path: str) -> list[Any]:
    """Return the request body examples the document gives for POST `path`."""
    media = SCHEMA.raw_schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    return [example["value"] for example in media["examples"].values()]


def send_json(env: FuzzEnv, path: str, value: Any) -> schemathesis.Response:
    """Send `value` as the JSON body of POST `path`, as json.dumps writes it (NaN, \\udXXX escapes)."""
    return send_raw(env, path, json.dumps(value).encode())


def send_raw(env: FuzzEnv, path: str, raw: bytes, content_type: str = "application/json") -> schemathesis.Response:
    """Send the bytes `raw` as the body of POST `path`."""
    return env.check(operation(path, "post").Case(), data=raw, headers={"Content-Type": content_type})


@pytest.mark.parametrize("path", POSTS)
def test_every_example_damaged_everywhere(env, path):
    for value in (value for example in examples(path) for value in sweep(example)):
        expect(path, value, send_json(env, path, value), accepted=document_accepts(path, value))


@pytest.mark.parametrize("path", POSTS)
def test_hostile_values_anywhere_in_generated_bodies(env, path):
    @bounded(40 if path != "/generate" else 25)
    @given(case=operation(path, "post").as_strategy(), data=st.data())
    def run(case, data):
        spot = data.draw(st.sampled_from(spots(case.body)))
        action = data.draw(st.sampled_from(["replace", "drop", "add"]))
        value = mutate(case.body, spot, action, data.draw(st.sampled_from(HOSTILE)),
                       data.draw(st.sampled_from(HOSTILE_KEYS)))
        expect(path, value, send_json(env, path, value), accepted=document_accepts(path, value))

    run()


def parsed_json(raw: bytes, content_type: str) -> tuple[bool, Any]:
    """Return (parsed, value): whether a strict server reads `raw` sent as `content_type` as JSON."""
    mimetype = content_type.split(";")[0].strip().lower()
    if not (mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))):
        return False, None

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")  # Python reads NaN and Infinity; JSON has neither

    try:
        return True, json.loads(raw.decode("utf-8-sig"), parse_constant=refuse)
    except (ValueError, RecursionError):  # UnicodeDecodeError included
        return False, None


@pytest.mark.parametrize("path", POSTS)
def test_broken_bytes_and_other_content_types_are_refused(env, path):
    """Each broken body and each example cut short as JSON; each example whole as each content type."""
    whole = [json.dumps(example).encode() for example in examples(path)]
    cut = [text[:end] for text in whole for end in (1, len(text) // 2, len(text) - 1)]
    sent = [(raw, "application/json") for raw in BROKEN + cut]
    for raw, content_type in sent + [(raw, content_type) for raw in whole for content_type in CONTENT_TYPES]:
        parsed, value = parsed_json(raw, content_type)
        accepted = parsed and document_accepts(path, value)
        expect(path, value, send_raw(env, path, raw, content_type), accepted=accepted)


@pytest.mark.parametrize("path", GETS)
def test_every_parameter_given_every_hostile_value(env, path):
    """Each hostile value in each parameter, the others valid; then each unknown query parameter."""
    op = operation(path)
    where = {p.name: p.location for p in op.iter_parameters()}
    valid = {p.name: "0" * 24 if p.location == "path" else "alice" for p in op.iter_parameters() if p.is_required}

    def case(values: dict[str, str]) -> schemathesis.Case:
        return op.Case(path_parameters={k: v for k, v in values.items() if where.get(k) == "path"},
                       query={k: v for k, v in values.items() if where.get(k) != "path"})

    for name, location in where.items():
        for value in SWEEP_PATH if location == "path" else SWEEP_QUERY:
            env.check(case({**valid, name: value}))
    for name in UNKNOWN_QUERY:  # refused wherever the operation takes a query (unknown_query_refused)
        env.check(case({**valid, name: "1"}))


@pytest.mark.parametrize("path", sorted(SCHEMA.raw_schema["paths"]))
def test_undocumented_methods_answer_405(env, path):
    documented = set(SCHEMA.raw_schema["paths"][path])
    op = operation(path, sorted(documented)[0])
    names = [p.name for p in op.iter_parameters() if p.location == "path"]
    for method in sorted({"get", "post", "put", "delete", "patch"} - documented):
        response = env.check(op.Case(method=method.upper(), path_parameters={name: "x" for name in names}))
        assert response.status_code == 405 and response.headers["allow"]


def test_authorization_headers_other_than_the_token_are_refused(make_app):
    client = make_app(API_TOKEN="fuzz-token").test_client()
    latin = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
    near = st.sampled_from(["Bearer", "Bearer  fuzz-token ", "bearer fuzz-token", "Bearer fuzz-token\t"])

    @bounded(60)
    @given(value=latin | latin.map(lambda s: f"Bearer {s}") | near)
    def run(value):
        response = client.get("/generations", headers={"Authorization": value})
        right = value.partition(" ")[0].lower() == "bearer" and value.partition(" ")[2].strip() == "fuzz-token"
        assert response.status_code == (200 if right else 401)
        check_response("/generations", "get", response)  # schemathesis cannot record such header values

    run()


# --- Regressions: what the fuzzing found, each pinned with the smallest request that showed it.

SURROGATE_BODIES = [
    ("/paint/start", b'{"username": "\\ud800"}'),  # was 500: BSON cannot encode it
    ("/paint/start", b'{"username": "\xed\xa0\x80"}'),  # the same surrogate, encoded as if UTF-8 could
    ("/paint/save", '{"username": "seed", "data": {"designSchemes": {"快速发散": [{"a": "\\udc00"}]}, '
                    '"designTask": "", "currentStage": "准备"}}'.encode()),
    ("/generate", b'{"appid": 0, "type": 0, "username": "\\ud800", "prompts": {"task": "t", "num": 1}}'),
]


@pytest.mark.parametrize("path,raw", SURROGATE_BODIES)
def test_lone_surrogates_are_refused_before_anything_runs(env, path, raw):
    response = send_raw(env, path, raw)
    assert response.status_code == 400
    assert "surrogate" in response.json()["message"] or "UTF-8" in response.json()["message"]


@pytest.mark.parametrize("raw", [b'{"username": "seed", "data": {"designSchemes": {}, "designTask": "", '
                                 b'"currentStage": "\xe5\x87\x86\xe5\xa4\x87"}, "x": Infinity}',
                                 b'{"username": NaN}'])
def test_nan_and_infinity_are_not_json(env, raw):
    # Infinity in a scheme was stored (503 on nx-27017), then sent back as invalid JSON.
    response = send_raw(env, "/paint/save" if b"data" in raw else "/paint/start", raw)
    assert response.status_code == 400 and "not a JSON number" in response.json()["message"]


# What no decoding makes an image of. The sketch's format is a note to tools that do not know it,
# so the schema by itself must refuse these: it took `designImage: ""`, which the server refuses.
NO_SKETCHES = ["", " ", "data:image/png;base64,", "data:image/png,iVBORw0KGgo", "not base64!", "AA=="]


@pytest.mark.parametrize("image", NO_SKETCHES)
def test_what_is_no_sketch_the_schema_itself_refuses(env, image):
    sketches = [(example, spot) for example in examples("/generate") for spot in spots(example)
                if spot and spot[-1] == "designImage"]
    assert sketches, "the /generate examples carry no sketch"
    for example, spot in sketches:
        value = mutate(example, spot, "replace", image)
        assert not schema_accepts(value, request_schema("/generate", "post")), value["prompts"]
        response = send_json(env, "/generate", value)
        assert response.status_code == 400 and "designImage: " in response.json()["message"], response.json()


@pytest.mark.parametrize("before", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_before_times_beyond_the_utc_range_are_refused(env, before):
    response = env.check(operation("/generations").Case(query={"before": before}))  # was 500: OverflowError
    assert response.status_code == 400 and response.json()["message"].startswith("before:")


def test_an_escaped_backslash_u_is_plain_text(env):
    response = send_raw(env, "/paint/start", b'{"username": "\\\\ud800"}')
    assert response.status_code == 200 and response.json()["data"]["username"] == "\\ud800"
