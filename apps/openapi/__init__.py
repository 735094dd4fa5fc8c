"""The API described: its OpenAPI 3.1 document, served at /openapi.json for tools and at /docs for people.

The document is built once from what the server itself declares wherever it can: the
pydantic models of /generate's prompts and answers (`apps.paint.pipelines.PIPELINES`) and
of the query strings (`HistoryQuery`, `PageQuery`), and the limits the session and record
modules name. The rest (routes, the envelope, the failure answers, the stored shapes) is
written here once.

/docs is Swagger UI, whose assets the flask-swagger-ui package installs from PyPI and this
server serves itself (no CDN: a study network may be offline), started on /openapi.json.
Both sit behind API_TOKEN like every route but the probes: they reveal no data, but a
deployment that asks for a token should not advertise its researcher routes to anyone.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import flask_swagger_ui
from flask import Blueprint, Response, jsonify, render_template, send_from_directory
from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic.json_schema import models_json_schema

import config
from apps import records as limits
from apps.paint import sessions
from apps.paint.pipelines import PIPELINES
from apps.paint.sessions import SCHEME_FIELDS
from core import validation as v
from core.db import Id
from core.envelope import CODE_BACKEND, CODE_BUSINESS, CODE_OK, CODE_STORAGE, NotFound
from core.request_body import BodyMemoryFull

JSON = "application/json"


# -- shared schemas ---------------------------------------------------------------------------


def ref(name: str) -> dict[str, str]:
    """Return a reference to the component schema `name`."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """Return a schema accepting `schema` or null."""
    return {"anyOf": [schema, {"type": "null"}]}


ENVELOPE = {
    "type": "object",
    "description": "The shape of every JSON answer. `code`: 0 success, 1 business failure (bad input, "
                   "unknown participant, token, limits), 2 a generative backend (GPT or Stable Diffusion) "
                   "failed, 3 the database is unreachable or refused a write.",
    "required": ["success", "data", "code", "message"],
    "additionalProperties": False,
    "properties": {
        "success": {"type": "boolean"},
        "data": {"description": "The route's payload on success; null on failure (except GET /readyz)."},
        "code": {"type": "integer", "enum": [CODE_OK, CODE_BUSINESS, CODE_BACKEND, CODE_STORAGE]},
        "message": {"type": "string", "description": "Empty on success; on failure, why, in words a person "
                                                     "can act on (a bad field is named first)."},
    },
}

def _type_schema(annotation: Any, **extra: Any) -> dict[str, Any]:
    """Return the JSON schema pydantic writes for one annotated type (a name, an id), for a component."""
    written = TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True)).json_schema()
    return {**written, **extra}


USERNAME = _type_schema(v.Username)
OBJECT_ID = _type_schema(Id, examples=["6650c0ffee0000000000abcd"])

SHA256 = {
    "type": "string",
    "minLength": 64,
    "maxLength": 64,
    "pattern": "^[0-9a-fA-F]{64}$",
    "description": "The SHA-256 of an image's bytes, 64 hex characters.",
}

STAGE = _type_schema(sessions.Stage, description="A study stage, as the client spells it: 准备 (not ready), "
                     "快速发散 (rapid divergence), 深入发散 (deep divergence), 收敛 (convergence), 完成 (finished), "
                     "禁止 (disabled).")

# Any JSON MongoDB stores as given. Depth (at most core.validation.MAX_DEPTH levels) is not
# expressible in JSON Schema; the description says it.
STORABLE_VALUE = {
    "description": f"Any JSON value that MongoDB can store unchanged: object keys do not start with '$' "
                   f"and contain no '.' or NUL, integers fit in 64 bits, nesting is at most "
                   f"{v.MAX_DEPTH} levels deep.",
    "anyOf": [
        {"type": ["null", "boolean", "string"]},
        {"type": "integer", "minimum": v.INT64_MIN, "maximum": v.INT64_MAX},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "array", "items": ref("StorableValue")},
        ref("StorableObject"),
    ],
}

STORABLE_OBJECT = {
    "type": "object",
    "propertyNames": {"pattern": "^([^$.\\u0000][^.\\u0000]*)?$"},
    "additionalProperties": ref("StorableValue"),
}

SCHEME = {
    "allOf": [ref("StorableObject")],
    "description": "One sketch as the client's canvas produced it. The server stores it as opaque JSON "
                   "and hands it back unchanged.",
    "examples": [{
        "name": "", "canvasSvg": "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>",
        "canvasImage": "data:image/png;base64,iVBORw0KGgo...",
        "paths": [{"drawMode": True, "strokeColor": "#000", "strokeWidth": 5, "paths": [{"x": 1.5, "y": 2}]}],
        "texts": [{"text": "可折叠", "position": {"x": 10, "y": 20}}],
    }],
}

STORED_SCHEME = {"type": "object", "description": "A scheme exactly as it was saved."}

IMAGE_REF = {
    "type": "object",
    "description": "An image moved to the image store; fetch it with GET /images/{sha256}.",
    "required": ["sha256", "contentType"],
    "additionalProperties": False,
    "properties": {"sha256": ref("Sha256"),
                   "contentType": {"type": "string", "enum": ["image/png", "image/jpeg", "image/webp"]}},
}

COMMON = {
    "Envelope": ENVELOPE,
    "Username": USERNAME,
    "ObjectId": OBJECT_ID,
    "Sha256": SHA256,
    "Stage": STAGE,
    "StorableValue": STORABLE_VALUE,
    "StorableObject": STORABLE_OBJECT,
    "Scheme": SCHEME,
    "StoredScheme": STORED_SCHEME,
    "ImageRef": IMAGE_REF,
}


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Return the query parameters of a query model, each with the schema pydantic writes for its field."""
    schema = model.model_json_schema(by_alias=True)
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in schema["properties"].items():
        field = {key: value for key, value in field.items() if key != "title"}
        present = [branch for branch in field.pop("anyOf", ()) if branch != {"type": "null"}]
        if present:  # optional: a query parameter is absent, never null
            field = {**(present[0] if len(present) == 1 else {"anyOf": present}), **field}
        if field.get("default", ...) is None:
            del field["default"]
        description = field.pop("description", None)
        parameters.append({"name": name, "in": "query", "required": name in required, "schema": field,
                           **({"description": description} if description else {})})
    return parameters


# -- answers ----------------------------------------------------------------------------------
def success(data: dict[str, Any]) -> dict[str, Any]:
    """Return the schema of a success envelope whose `data` is `data`."""
    return {"allOf": [ref("Envelope")],
            "properties": {"success": {"const": True}, "code": {"const": 0}, "data": data}}


def failure(*codes: int, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the schema of a failure envelope with one of `codes` (and null data unless given)."""
    return {"allOf": [ref("Envelope")],
            "properties": {"success": {"const": False}, "code": {"enum": list(codes)},
                           "data": data if data is not None else {"type": "null"}}}


def example(message: str, code: int = CODE_BUSINESS) -> dict[str, Any]:
    """Return a failure envelope example."""
    return {"success": False, "data": None, "code": code, "message": message}


def json_response(description: str, schema: dict[str, Any], examples: dict[str, Any] | None = None,
                  headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a response object with a JSON body, its named examples and headers."""
    content: dict[str, Any] = {"schema": schema}
    if examples:
        content["examples"] = {name: {"value": value} for name, value in examples.items()}
    response: dict[str, Any] = {"description": description, "content": {JSON: content}}
    if headers:
        response["headers"] = headers
    return response


def ok(description: str, data: dict[str, Any], example_data: Any) -> dict[str, Any]:
    """Return a 200 response whose envelope carries `data`."""
    return json_response(description, success(data),
                         {"ok": {"success": True, "data": example_data, "code": 0, "message": ""}})


def _header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "schema": schema, "required": True}  # always sent with the status


_BUSY = ("or the bodies being read hold the server's whole BODY_MEMORY_BUDGET (code 1), answered before "
         "this body is read: send it again after `Retry-After` seconds")
_RETRY_AFTER_BUSY = {"Retry-After": {"description": "With code 1: seconds after which to send the request again.",
                                     "schema": {"type": "integer", "minimum": 1}}}

RESPONSES = {
    "BadRequest": json_response(
        "Bad input: the body is not a JSON object or a field or parameter is wrong; the message names "
        "it first (`prompts.schemes[1].designImage: ...`). Nothing is written.",
        failure(CODE_BUSINESS), {"bad field": example("username: must not be empty")}),
    "Unauthorized": json_response(
        "API_TOKEN is set and the request lacks `Authorization: Bearer <API_TOKEN>`.",
        failure(CODE_BUSINESS),
        {"no token": example("missing or wrong bearer token: send Authorization: Bearer <API_TOKEN>")}),
    "NotFound": json_response(
        "What the request names does not exist (or no route has this path).",
        failure(CODE_BUSINESS), {"unknown": example("participant 'bob' does not exist; call /paint/start first")}),
    "MethodNotAllowed": json_response(
        "The path exists but not with this method; `Allow` lists the methods it has.",
        failure(CODE_BUSINESS), {"wrong method": example("method GET is not allowed on /paint/start")},
        {"Allow": _header("The methods of this path.", {"type": "string"})}),
    "PayloadTooLarge": json_response(
        "The body is larger than MAX_CONTENT_LENGTH (SAVE_MAX_CONTENT_LENGTH for /paint/save), or a "
        "document would exceed MongoDB's 16 MB limit.",
        failure(CODE_BUSINESS), {"too large": example("request body is larger than the server accepts")}),
    "RateLimited": json_response(
        "The client used up its GENERATE_RATE_LIMIT budget (requests per minute per address).",
        failure(CODE_BUSINESS), {"too many": example("too many generation requests; retry in 4 s")},
        {"Retry-After": _header("Seconds until a request is allowed again.", {"type": "integer", "minimum": 1})}),
    "StorageUnavailable": json_response(
        "The database is unreachable (within MONGO_TIMEOUT_MS) or refused a write; retry shortly.",
        failure(CODE_STORAGE),
        {"database down": example("the database is unavailable; try again shortly", CODE_STORAGE)}),
    "StorageOrBodyMemoryUnavailable": json_response(
        "The database is unreachable (within MONGO_TIMEOUT_MS) or refused a write (code 3); " + _BUSY + ".",
        failure(CODE_BUSINESS, CODE_STORAGE),
        {"database down": example("the database is unavailable; try again shortly", CODE_STORAGE),
         "busy": example(BodyMemoryFull().message)}, _RETRY_AFTER_BUSY),
    "BackendUnavailable": json_response(
        "A generative backend failed (code 2, the message names the pipeline step), or the database is "
        "unreachable (code 3); " + _BUSY + ".",
        failure(CODE_BUSINESS, CODE_BACKEND, CODE_STORAGE),
        {"backend": example("rapid.images: no Stable Diffusion instance is available", CODE_BACKEND),
         "busy": example(BodyMemoryFull().message)}, _RETRY_AFTER_BUSY),
    "BackendTimeout": json_response(
        "A generative backend did not answer in time; the message names the step.",
        failure(CODE_BACKEND), {"timeout": example("rapid.products: GPT timed out", CODE_BACKEND)}),
    "InternalError": json_response(
        "An unexpected failure (500), still in the envelope; the details are in the server log.",
        failure(CODE_BUSINESS, CODE_STORAGE), {"bug": example("internal server error")}),
}

STATUS_RESPONSES = {
    "400": "BadRequest", "401": "Unauthorized", "404": "NotFound", "405": "MethodNotAllowed",
    "413": "PayloadTooLarge", "429": "RateLimited", "503": "StorageUnavailable", "504": "BackendTimeout",
}


def errors(*statuses: int, **named: str) -> dict[str, Any]:
    """Return the failure responses for `statuses` (plus `default`), `named` overriding a status's component."""
    chosen = {str(status): STATUS_RESPONSES[str(status)] for status in statuses}
    chosen.update({status.lstrip("_"): name for status, name in named.items()})
    answers = {status: {"$ref": f"#/components/responses/{name}"} for status, name in sorted(chosen.items())}
    answers["default"] = {"$ref": "#/components/responses/InternalError"}
    return answers


# -- probes, metrics, this document -----------------------------------------------------------
OPEN = [{}]  # no security requirement: these answer even when API_TOKEN is set
TEXT = "text/plain"


def _text(description: str, example: str, media: str = TEXT) -> dict:
    return {"description": description, "content": {media: {"schema": {"type": "string"}, "example": example}}}


INSTANCE = {
    "type": "object",
    "required": ["name", "state", "healthy", "cooldown_remaining", "last_error"],
    "properties": {"name": {"type": "string", "description": "The instance's URL without credentials."},
                   "state": {"type": "string", "description": "idle, busy, cooldown or probing."},
                   "healthy": {"type": "boolean"},
                   "cooldown_remaining": {"type": "number", "minimum": 0},
                   "last_error": nullable({"type": "string"})},
}

READINESS = {
    "type": "object",
    "required": ["database", "sd", "gpt"],
    "properties": {
        "database": {"type": "object", "required": ["reachable"], "properties": {"reachable": {"type": "boolean"}}},
        "sd": {"type": "object", "required": ["total", "healthy", "busy", "waiting", "closed", "instances"],
               "properties": {"total": {"type": "integer"}, "healthy": {"type": "integer"},
                              "busy": {"type": "integer"}, "waiting": {"type": "integer"},
                              "closed": {"type": "boolean"}, "instances": {"type": "array", "items": INSTANCE}}},
        "gpt": {"type": "object", "required": ["configured", "provider", "deployments", "recent_failures"],
                "properties": {"configured": {"type": "boolean"}, "provider": nullable({"type": "string"}),
                               "deployments": {"type": "object"},
                               "recent_failures": {"type": "object",
                                                   "additionalProperties": {"type": "integer"}}}},
    },
}

READY_EXAMPLE = {"database": {"reachable": True},
                 "sd": {"total": 1, "healthy": 1, "busy": 0, "waiting": 0, "closed": False, "instances": [
                     {"name": "http://sd-1:7860", "state": "idle", "healthy": True,
                      "cooldown_remaining": 0, "last_error": ""}]},
                 "gpt": {"configured": True, "provider": "azure", "deployments": {}, "recent_failures": {}}}

NOT_READY_EXAMPLE = {**READY_EXAMPLE, "sd": {"total": 0, "healthy": 0, "busy": 0, "waiting": 0, "closed": False,
                                             "instances": []}}

SYSTEM_SCHEMAS = {"Readiness": READINESS}

SYSTEM_PATHS = {
    "/ping": {
        method: {"tags": ["system"], "operationId": f"ping{method.title()}", "security": OPEN,
                 "summary": "Answer the plain text pong (liveness for curl and old probes)",
                 "responses": {"200": _text("pong", "pong"),
                               "405": {"$ref": "#/components/responses/MethodNotAllowed"}}}
        for method in ("get", "post")
    },
    "/healthz": {"get": {
        "tags": ["system"], "operationId": "healthz", "security": OPEN,
        "summary": "Answer that the process is alive, without any I/O",
        "responses": {"200": ok("Alive.", {"type": "object", "required": ["status"],
                                           "properties": {"status": {"const": "alive"}}}, {"status": "alive"}),
                      "405": {"$ref": "#/components/responses/MethodNotAllowed"}},
    }},
    "/readyz": {"get": {
        "tags": ["system"], "operationId": "readyz", "security": OPEN,
        "summary": "Say whether a generation can work now: database, GPT and a healthy SD instance",
        "description": "Cheap: one database ping and the backends' own counters; no model is called. "
                       "`message` says what is missing or degraded.",
        "responses": {
            "200": json_response("Ready (possibly degraded; see message).",
                                 {**success({"$ref": "#/components/schemas/Readiness"}), "required": ["message"]},
                                 {"ready": {"success": True, "data": READY_EXAMPLE, "code": 0, "message": "ready"}}),
            "503": json_response("Not ready: code 3 when the database is unreachable, else 2.",
                                 failure(CODE_BACKEND, CODE_STORAGE, data={"$ref": "#/components/schemas/Readiness"}),
                                 {"no SD": {"success": False, "data": NOT_READY_EXAMPLE, "code": CODE_BACKEND,
                                            "message": "not ready: no SD instances configured (set SD_ENDPOINTS)"}}),
            "405": {"$ref": "#/components/responses/MethodNotAllowed"}},
    }},
    "/metrics": {"get": {
        "tags": ["system"], "operationId": "metrics",
        "summary": "Every metric in the Prometheus text format",
        "description": "Requests by route pattern, method and status; generation and step durations; the "
                       "SD pool's and the GPT client's counters, read at scrape time.",
        "responses": {"200": _text("Prometheus exposition (text format 0.0.4).",
                                   "# TYPE refinity_http_requests_total counter\n"),
                      **errors(401, 405)},
    }},
    "/openapi.json": {"get": {
        "tags": ["documentation"], "operationId": "openapiDocument",
        "summary": "This OpenAPI 3.1 document (plain JSON, not in the envelope, so tools can read it)",
        "responses": {"200": {"description": "The document.", "content": {"application/json": {
            "schema": {"type": "object", "required": ["openapi", "info", "paths"]}}}},
            **errors(401, 405)},
    }},
    "/docs": {"get": {
        "tags": ["documentation"], "operationId": "docsPage",
        "summary": "This document in Swagger UI; every asset comes from this server",
        "responses": {"200": _text("The page.", "<!doctype html>...", "text/html"), **errors(401, 405)},
    }},
    "/docs/assets/{name}": {"get": {
        "tags": ["documentation"], "operationId": "docsAsset",
        "summary": "One script or style sheet of the docs page",
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                        "description": "swagger-ui.css, swagger-ui-bundle.js or docs.js."}],
        "responses": {"200": {"description": "The asset.", "content": {
            media: {"schema": {"type": "string"}} for media in ("text/css", "text/javascript")}},
            **errors(401, 404, 405)},
    }},
}


# -- participant sessions ---------------------------------------------------------------------
EXAMPLE_ID = "6650c0ffee0000000000abcd"
EXAMPLE_TASK = "设计一款运动辅助产品"

SESSION = {
    "type": "object",
    "description": "The participant's stored session; the client spreads it into its state.",
    "required": ["_id", "username", "currentStage", "designTask", *SCHEME_FIELDS.values()],
    "additionalProperties": False,
    "properties": {
        "_id": ref("ObjectId"),
        "username": {"type": "string"},
        "currentStage": ref("Stage"),
        "designTask": {"type": "string"},
        **{field: {"type": "array", "items": ref("StoredScheme"),
                   "description": f"The schemes saved under {stage}."} for stage, field in SCHEME_FIELDS.items()},
    },
}

SESSION_EXAMPLE = {"_id": EXAMPLE_ID, "username": "alice", "currentStage": "准备", "designTask": "",
                   "rapidDivergenceSchemes": [], "deepDivergenceSchemes": [], "convergenceSchemes": []}

SAVE_EXAMPLE = {"username": "alice", "data": {
    "designSchemes": {"准备": None, "快速发散": [{"name": "", "canvasImage": "data:image/png;base64,iVBORw0KGgo..."}],
                      "深入发散": [], "收敛": [], "完成": None, "禁止": None},
    "designTask": EXAMPLE_TASK, "currentStage": "快速发散"}}

PAINT_SCHEMAS = {"Session": SESSION}


def _body(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema, "examples": {"client": {"value": example}}}}}


PAINT_PATHS = {
    "/paint/start": {"post": {
        "tags": ["sessions"], "operationId": "startSession",
        "summary": "Create the participant on first visit and return the stored session",
        "requestBody": _body(ref("StartBody"), {"username": "alice"}),
        "responses": {"200": ok("The participant's session.", ref("Session"), SESSION_EXAMPLE),
                      **errors(400, 401, 405, 413, _503="StorageOrBodyMemoryUnavailable")},
    }},
    "/paint/save": {"post": {
        "tags": ["sessions"], "operationId": "saveSession",
        "summary": "Make the state sent the participant's current one, keeping the previous ones",
        "description": "The body carries the whole session, every sketch as a data URI, so its limit is "
                       "SAVE_MAX_CONTENT_LENGTH. Schemes are stored as opaque JSON and returned unchanged.",
        "requestBody": _body(ref("SaveBody"), SAVE_EXAMPLE),
        "responses": {"200": ok("Saved.", {"type": "null"}, None),
                      **errors(400, 401, 404, 405, 413, _503="StorageOrBodyMemoryUnavailable")},
    }},
    "/paint/history": {"get": {
        "tags": ["sessions"], "operationId": "listSaves",
        "summary": "List the participant's saves, newest first",
        "description": "Parameters other than username and limit are rejected (400).",
        "parameters": query_parameters(sessions.HistoryQuery),
        "responses": {"200": ok("The saves, newest first.", ref("History"), {"username": "alice", "saves": [{
            "id": EXAMPLE_ID, "revision": 3, "savedAt": "2024-05-24T09:30:00.123Z", "kind": "save",
            "currentStage": "快速发散", "designTask": EXAMPLE_TASK, "counts": {"快速发散": 2, "深入发散": 0, "收敛": 0}}]}),
            **errors(400, 401, 404, 405, 503)},
    }},
    "/paint/history/{entry_id}": {"get": {
        "tags": ["sessions"], "operationId": "getSavedState",
        "summary": "Return one past state of a participant, in the shape of /paint/start",
        "parameters": [{"name": "entry_id", "in": "path", "required": True, "schema": ref("ObjectId"),
                        "description": "The `id` of a save in GET /paint/history."}],
        "responses": {"200": ok("The saved state.", ref("Session"), SESSION_EXAMPLE),
                      **errors(400, 401, 404, 405, 503)},
    }},
}


# -- generation and its records ---------------------------------------------------------------
# The format of a sketch a client sends (core.image_store.SketchImage): its bytes are checked,
# which JSON Schema cannot express.
IMAGE_FORMAT = "image-data-uri"

TYPES = {0: "rapid divergence", 1: "deep divergence", 2: "convergence, naming and selection",
         3: "convergence, group two"}


REQUESTS = {
    f"Generate{p.prompts.__name__.removesuffix('Prompts')}": {
        "type": "object", "required": ["appid", "type", "prompts"], "title": f"type {type_}: {TYPES[type_]}",
        "properties": {
            "appid": {"type": "integer", "const": config.APP_PAINT, "description": "The sketching app."},
            "type": {"type": "integer", "const": type_, "description": TYPES[type_]},
            "username": {**nullable(ref("Username")), "description": "Who asks, for the record; optional."},
            "prompts": ref(p.prompts.__name__)}}
    for type_, p in PIPELINES.items()
}
REQUESTS["GenerateRequest"] = {"oneOf": [ref(name) for name in REQUESTS],
                               "description": "Unknown appid or type, or prompts of the wrong shape, answer 400."}
RESULTS = {"GenerateData": {"oneOf": [ref(p.answer.__name__) for p in PIPELINES.values()],
                            "description": "The data of the type asked for."}}



SKETCH = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
          "AAAABJRU5ErkJggg==")  # a 1x1 PNG
TASK = "设计一款运动辅助产品"
IMAGE = "/9j/4AAQSkZJRgABAQAAAQABAAD"  # the start of a JPEG, shortened
RECORD_ID = "6650c0ffee0000000000abcd"

REQUEST_EXAMPLES = {
    "type 0": {"appid": 0, "type": 0, "username": "alice", "prompts": {"task": TASK, "num": 6}},
    "type 1": {"appid": 0, "type": 1, "prompts": {"designTask": TASK, "designTexts": ["可折叠", "带计数"],
                                                  "designImage": SKETCH, "schemeId": 2}},
    "type 2": {"appid": 0, "type": 2, "prompts": {"designTask": TASK, "selectNum": 1, "schemes": [
        {"designTexts": ["可折叠"], "designImage": SKETCH}, {"designTexts": ["带计数"], "designImage": SKETCH}]}},
    "type 3": {"appid": 0, "type": 3, "prompts": {"selectedSchemes": [{"designTexts": ["可折叠", "带计数"]}], "num": 3}},
}


def _card(type_: int, display: str, *items: dict) -> dict:
    return {"type": type_, "displayType": display, "items": list(items)}


def _item(kind: str, text: str | None = None, image: str | None = None, combinations: list | None = None) -> dict:
    return {"type": kind, "text": text, "image": image, "combinations": combinations}


RESPONSE_EXAMPLES = {
    "type 0": {"count": 1, "result": [_card(0, "sequence", _item("abstractImage", image=IMAGE),
                                            _item("abstractText", "利用弹性储能辅助起身"))]},
    "type 2": {"names": ["折叠跳绳", "计数哑铃"], "selected": ["计数哑铃"]},
    "type 3": {"result": [_card(4, "direct", _item("groupTypeTwo", combinations=[
        _item("abstractImage", image=IMAGE), _item("concreteImage", image=IMAGE),
        _item("concreteText", "可折叠收纳，内置计数屏，握把防滑")]))]},
}

RECORD = {
    "allOf": [ref("GenerationSummary")],
    "required": ["input", "steps", "result"],
    "description": "Everything one POST /generate did; images are ImageRef objects.",
    "properties": {
        "input": nullable({"type": "object", "description": "The prompts as checked, in the client's names."}),
        "steps": {"type": "array", "items": {"type": "object", "required": ["kind"],
                                             "properties": {"kind": {"enum": ["llm", "image"]}}},
                  "description": "One entry per GPT call and per image job, in the order they finished."},
        "result": nullable({"type": "object", "description": "The data the client received."}),
    },
}

GENERATE_SCHEMAS = {**REQUESTS, **RESULTS, "GenerationRecord": RECORD}

_SUMMARY_EXAMPLE = {"_id": RECORD_ID, "createdAt": "2024-05-24T09:30:00.123Z",
                    "finishedAt": "2024-05-24T09:31:10.456Z", "durationMs": 70333, "appid": 0, "type": 0,
                    "username": "alice", "status": "ok", "error": None}
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")

GENERATE_PATHS = {
    "/generate": {"post": {
        "tags": ["generation"], "operationId": "generate",
        "summary": "Run one generation pipeline and answer its creatives",
        "description": "Every request that passes validation leaves a record (GET /generations), whether it "
                       "succeeds or fails; rejected ones leave none. A generation takes up to minutes.",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": ref("GenerateRequest"),
            "examples": {name: {"value": value} for name, value in REQUEST_EXAMPLES.items()}}}},
        "responses": {"200": {**ok("The creatives.", ref("GenerateData"), RESPONSE_EXAMPLES["type 0"])},
                      **errors(400, 401, 405, 413, 429, 504, _503="BackendUnavailable")},
    }},
    "/generations": {"get": {
        "tags": ["records"], "operationId": "listGenerations",
        "summary": "List generation record summaries, newest first",
        "description": "Parameters other than these four are rejected (400), and so is a `before` id that "
                       "no record has.",
        "parameters": query_parameters(limits.PageQuery),
        "responses": {"200": ok("A page of summaries.", ref("GenerationPage"),
                                {"items": [_SUMMARY_EXAMPLE], "next": None}),
                      **errors(400, 401, 405, 503)},
    }},
    "/generations/{record_id}": {"get": {
        "tags": ["records"], "operationId": "getGeneration", "summary": "Return one whole generation record",
        "parameters": [{"name": "record_id", "in": "path", "required": True, "schema": ref("ObjectId")}],
        "responses": {"200": ok("The record.", ref("GenerationRecord"), {
            **_SUMMARY_EXAMPLE, "input": {"task": TASK, "num": 1}, "steps": [],
            "result": RESPONSE_EXAMPLES["type 0"]}), **errors(400, 401, 404, 405, 503)},
    }},
    "/images/{key}": {"get": {
        "tags": ["records"], "operationId": "getImage",
        "summary": "Serve a stored image by its SHA-256 (case-insensitive)",
        "description": "Images never change under their hash: the answer is cacheable for good and "
                       "honours If-None-Match.",
        "parameters": [{"name": "key", "in": "path", "required": True, "schema": ref("Sha256"),
                        "description": "The image's SHA-256, as in an ImageRef."}],
        "responses": {
            "200": {"description": "The bytes. Generation images are PNG, JPEG or WebP; a blob moved out of a "
                                   "saved scheme keeps the media type its data URI declared, or is "
                                   "image/svg+xml, text/plain or application/json. Served sandboxed.",
                    "headers": {"ETag": {"schema": {"type": "string"}, "required": True},
                                "Cache-Control": {"schema": {"type": "string"}, "required": True,
                                                  "description": "public, max-age=31536000, immutable"},
                                "X-Content-Type-Options": {"schema": {"const": "nosniff"}, "required": True},
                                "Content-Security-Policy": {"schema": {"type": "string"}, "required": True,
                                                            "description": "sandbox; default-src 'none'"}},
                    "content": {**{kind: {"schema": {"type": "string", "contentMediaType": kind}}
                                   for kind in IMAGE_TYPES},
                                "*/*": {"schema": {"type": "string"}}}},
            "304": {"description": "Not modified (If-None-Match named this image)."},
            **errors(400, 401, 404, 405, 503)},
    }},
}


# -- the document -----------------------------------------------------------------------------
VERSION = "1.0.0"

DESCRIPTION = """\
The server behind the Refinity sketching client: participant sessions, creative stimuli from GPT and
Stable Diffusion, and the researcher's records of every generation.

**The envelope.** Every JSON answer, success or failure, is `{"success", "data", "code", "message"}`
(`/openapi.json` excepted: tools read it as plain OpenAPI). `code` 0 is success, 1 a business failure,
2 a generative backend failure, 3 a database failure. The HTTP status is real (400, 401, 404, 405,
408, 413, 429, 503, 504) and the client may read the body whatever it is.

**Slow clients.** Under gunicorn a request's head must arrive within REQUEST_READ_TIMEOUT seconds,
and its body within that again plus a second per REQUEST_MIN_RATE bytes; a slower one is answered
408 (code 1) on any route, and the connection closed.

**Bodies** are UTF-8 JSON sent with `Content-Type: application/json`. Strings are Unicode text:
a lone surrogate escape (`"\\ud800"`) anywhere in a body is refused with 400, and so are the
non-JSON constants `NaN` and `Infinity`. **Integers** are written without a fraction
or exponent (`6`, not `6.0`); booleans are never integers.

**Authentication** is off unless the server sets `API_TOKEN`; then every route but `/ping`,
`/healthz` and `/readyz` (and CORS preflights) needs `Authorization: Bearer <API_TOKEN>`, including
this document and `/docs`.

**CORS.** Every route answers `OPTIONS` preflights for the origins in `CORS_ORIGINS`.
"""

TAGS = [
    {"name": "sessions", "description": "A participant's session: created on first visit, saved after every sketch."},
    {"name": "generation", "description": "Creative stimuli for the study's stages."},
    {"name": "records", "description": "What every generation did, for the researchers."},
    {"name": "system", "description": "Probes and metrics."},
    {"name": "documentation", "description": "This document."},
]


def _model_schemas() -> dict[str, Any]:
    """Return the schemas pydantic writes for the models the document names, each a component."""
    models = [(sessions.StartBody, "validation"), (sessions.SaveBody, "validation")]
    models += [(p.prompts, "validation") for p in PIPELINES.values()]
    models += [(p.answer, "serialization") for p in PIPELINES.values()]
    models += [(limits.GenerationPage, "serialization"), (sessions.History, "serialization")]
    _, top = models_json_schema(models, by_alias=True, ref_template="#/components/schemas/{model}")
    return top["$defs"]


@lru_cache(maxsize=1)
def _build() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Refinity API", "version": VERSION, "description": DESCRIPTION},
        "tags": TAGS,
        # Either no token (API_TOKEN unset) or the bearer token satisfies the API.
        "security": [{}, {"bearerAuth": []}],
        "paths": {**SYSTEM_PATHS, **PAINT_PATHS, **GENERATE_PATHS},
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "The server's API_TOKEN; required only when the server sets one."}},
            "schemas": {**COMMON, **_model_schemas(), **PAINT_SCHEMAS, **GENERATE_SCHEMAS, **SYSTEM_SCHEMAS},
            "responses": RESPONSES,
        },
    }


def build_document() -> dict[str, Any]:
    """Return a fresh copy of the API's OpenAPI document."""
    return copy.deepcopy(_build())


# -- the routes -------------------------------------------------------------------------------
bp = Blueprint("openapi", __name__, template_folder="templates")

SWAGGER_DIST = Path(flask_swagger_ui.__file__).parent / "dist"
OWN_ASSETS = Path(__file__).parent / "static"
# The files the page loads: Swagger UI's bundle and style, and the line that starts it.
ASSETS = {"swagger-ui.css": SWAGGER_DIST, "swagger-ui-bundle.js": SWAGGER_DIST, "docs.js": OWN_ASSETS}
# Scripts and styles from this server only; Swagger UI styles some elements inline.
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'")


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """Answer the OpenAPI document as plain JSON (not in the envelope), for tools."""
    return jsonify(build_document())


@bp.get("/docs")
def docs() -> Response:
    """Answer the page that shows the document with Swagger UI."""
    info = build_document()["info"]
    html = render_template("openapi/docs.html", title=f"{info['title']} {info['version']}",
                           version=version("flask-swagger-ui"))
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


@bp.get("/docs/assets/<name>")
def docs_asset(name: str) -> Response:
    """Serve one asset of the docs page; they change only with the package, so cache for a day."""
    if name not in ASSETS:
        raise NotFound(f"the docs page has no asset {name!r}")
    response = send_from_directory(ASSETS[name], name, max_age=86400)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
