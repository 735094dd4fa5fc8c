"""The API described: its OpenAPI 3.1 document, served at /openapi.json for tools and at /docs for people.

Every schema in it is one that pydantic writes for a type the server declares where the
fact lives: request bodies and queries, each answer's data, the envelope around it
(core.envelope.Envelope, parametrised per answer), stored shapes. Where the document needs
one it says `Schema(the type)`, and `_build` has pydantic write them all in one pass, the
models among them as components. Written here is the rest: routes, statuses, headers,
descriptions and examples.

/docs is Swagger UI, whose assets the flask-swagger-ui package installs from PyPI and this
server serves itself (no CDN: a study network may be offline), started on /openapi.json.
Both are researcher routes (core.security): they reveal no data, but strangers need not
learn the researcher routes from them.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal, get_args

import flask_swagger_ui
from flask import Blueprint, Response, jsonify, render_template, send_from_directory
from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from apps import jobs
from apps import records as limits
from apps.paint import sessions
from apps.generate import exchanges
from apps.system import Alive
from core.db import Id
from core.envelope import CODE_BACKEND, CODE_BUSINESS, CODE_OK, CODE_STORAGE, Envelope, NotFound
from core.request_body import BodyMemoryFull
from core.image_store import ImageType, Sha256
from core.monitoring import Readiness
from core.security import researcher

JSON = "application/json"
REF_TEMPLATE = "#/components/schemas/{model}"


# -- schemas ----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Schema:
    """A spot in the document for the JSON schema pydantic writes of `type`, a model or an annotated type."""

    type: Any
    mode: JsonSchemaMode = "serialization"  # "validation" for what a client sends


def _adapter(type_: Any) -> TypeAdapter:
    if isinstance(type_, type) and issubclass(type_, BaseModel):
        return TypeAdapter(type_)
    return TypeAdapter(type_, config=ConfigDict(arbitrary_types_allowed=True))  # an Id holds an ObjectId


def _spots(node: Any) -> Iterator[Schema]:
    if isinstance(node, Schema):
        yield node
    elif isinstance(node, (dict, list)):
        for item in node.values() if isinstance(node, dict) else node:
            yield from _spots(item)


def _filled(node: Any, written: dict[Schema, Any]) -> Any:
    if isinstance(node, Schema):
        return written[node]
    if isinstance(node, dict):
        return {key: _filled(item, written) for key, item in node.items()}
    if isinstance(node, list):
        return [_filled(item, written) for item in node]
    return node


def _is_envelope(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, Envelope)


def written_schemas(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return `document` with every Schema spot filled in, and the component schemas they refer to."""
    spots = list(_spots(document))
    found, top = TypeAdapter.json_schemas([(spot, spot.mode, _adapter(spot.type)) for spot in spots],
                                          by_alias=True, ref_template=REF_TEMPLATE)
    components = top.get("$defs", {})
    written = {spot: found[spot, spot.mode] for spot in spots}
    # An envelope is the shape of one answer, not a concept to name: written out where it stands.
    envelopes = {spot: written[spot]["$ref"].rsplit("/", 1)[-1] for spot in spots if _is_envelope(spot.type)}
    written.update({spot: components[name] for spot, name in envelopes.items()})
    named = {name: schema for name, schema in components.items() if name not in envelopes.values()}
    return _filled(document, written), named


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
def success(data: Any) -> Schema:
    """Return the schema of a success envelope whose `data` is of type `data` (or a Schema, in its mode)."""
    spot = data if isinstance(data, Schema) else Schema(data)
    return Schema(Envelope[Literal[True], Literal[CODE_OK], spot.type], spot.mode)


def failure(*codes: int, data: Any = None) -> Schema:
    """Return the schema of a failure envelope with one of `codes`, its data null unless of type `data`."""
    return Schema(Envelope[Literal[False], Literal[codes], data])


def answer(data: Any = None, code: int = CODE_OK, message: str = "") -> dict[str, Any]:
    """Return an example answer in the envelope, as core.envelope writes one."""
    return dict(Envelope.model_construct(success=code == CODE_OK, data=data, code=code, message=message))


def example(message: str, code: int = CODE_BUSINESS) -> dict[str, Any]:
    """Return an example failure answer."""
    return answer(code=code, message=message)


def json_response(description: str, schema: Schema | dict[str, Any], examples: dict[str, Any] | None = None,
                  headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a response object with a JSON body, its named examples and headers."""
    content: dict[str, Any] = {"schema": schema}
    if examples:
        content["examples"] = {name: {"value": value} for name, value in examples.items()}
    response: dict[str, Any] = {"description": description, "content": {JSON: content}}
    if headers:
        response["headers"] = headers
    return response


def ok(description: str, data: Any, example_data: Any) -> dict[str, Any]:
    """Return a 200 response whose envelope carries data of type `data`."""
    return json_response(description, success(data), {"ok": answer(example_data)})


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
        "A researcher route, and API_TOKEN is set: the request lacks `Authorization: Bearer <API_TOKEN>` "
        "(the token is never read from the query string).",
        failure(CODE_BUSINESS),
        {"no token": example("missing or wrong bearer token: send Authorization: Bearer <API_TOKEN>")}),
    "Forbidden": json_response(
        "A participant route called from an address outside ALLOWED_CLIENTS, or naming a username that is "
        "not in the participant register (PARTICIPANT_REGISTER); or a researcher route called from another "
        "machine while the server has no API_TOKEN.",
        failure(CODE_BUSINESS),
        {"not registered": example("username: 'mallory' is not registered for this study; ask the researcher "
                                   "to register it")}),
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
        "The client used up its GENERATE_RATE_LIMIT budget (requests per minute per address), or more of "
        "the participant's images would wait for a Stable Diffusion instance than SD_MAX_QUEUED_PER_PARTICIPANT "
        "allows.",
        failure(CODE_BUSINESS), {"too many": example("too many generation requests; retry in 4 s")},
        {"Retry-After": _header("Seconds until a request is allowed again (for waiting images, until they "
                                "should all have started).", {"type": "integer", "minimum": 1})}),
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
    "InputDeclined": json_response(
        "GPT declined the participant's words (Azure's content filter, or the model's refusal): code 1, "
        "since asking again unchanged meets the same answer; the message names the step and asks the "
        "participant to rephrase the design task or notes.",
        failure(CODE_BUSINESS), {"filtered": example(
            "rapid.products: GPT deployment 'gpt-4o': the content filter blocked the prompt (violence); "
            "请换一种说法描述设计任务或草图标注后再试")}),
    "AnswerRejected": json_response(
        "GPT answered, but not with what the step asked for, even after one corrective retry (a failed "
        "answer check, named in the message) or after one retry with a larger token budget (a cut answer).",
        failure(CODE_BACKEND), {"check": example(
            "naming.names: GPT's answer failed its checks again after a corrective retry (length: item 2: "
            "41 characters, asked for 5 to 8 characters)", CODE_BACKEND)}),
    "BackendTimeout": json_response(
        "A generative backend did not answer in time; the message names the step.",
        failure(CODE_BACKEND), {"timeout": example("rapid.products: GPT timed out", CODE_BACKEND)}),
    "Conflict": json_response(
        "The job has ended, so there is nothing to cancel (or another server process runs it).",
        failure(CODE_BUSINESS), {"ended": example("job 6650c0ffee0000000000abcd has ended (succeeded); there is "
                                                  "nothing to cancel")}),
    "InternalError": json_response(
        "An unexpected failure (500), still in the envelope; the details are in the server log.",
        failure(CODE_BUSINESS, CODE_STORAGE), {"bug": example("internal server error")}),
}

STATUS_RESPONSES = {
    "400": "BadRequest", "401": "Unauthorized", "403": "Forbidden", "404": "NotFound", "405": "MethodNotAllowed",
    "409": "Conflict", "413": "PayloadTooLarge", "429": "RateLimited", "503": "StorageUnavailable",
    "504": "BackendTimeout",
}


def errors(*statuses: int, **named: str) -> dict[str, Any]:
    """Return the failure responses for `statuses` (plus `default`), `named` overriding a status's component."""
    chosen = {str(status): STATUS_RESPONSES[str(status)] for status in statuses}
    chosen.update({status.lstrip("_"): name for status, name in named.items()})
    answers = {status: {"$ref": f"#/components/responses/{name}"} for status, name in sorted(chosen.items())}
    answers["default"] = {"$ref": "#/components/responses/InternalError"}
    return answers


# -- probes, metrics, this document -----------------------------------------------------------
OPEN = [{}]  # participant routes and probes: never the token (the web client sends none)
TEXT = "text/plain"


def _text(description: str, example: str, media: str = TEXT) -> dict:
    return {"description": description, "content": {media: {"schema": {"type": "string"}, "example": example}}}


READY_EXAMPLE = {"database": {"reachable": True, "supervised": True, "restarts": 0, "disk_free_mb": 20480,
                              "disk_full": False},
                 "shared": {"kind": "redis", "reachable": True},
                 "sd": {"total": 1, "healthy": 1, "busy": 0, "waiting": 0, "closed": False, "instances": [
                     {"name": "http://sd-1:7860", "state": "idle", "healthy": True,
                      "cooldown_remaining": 0, "last_error": ""}]},
                 "gpt": {"configured": True, "provider": "azure", "chat_deployment": "gpt-4o",
                         "vision_deployment": "gpt-4o", "structured": "auto",
                         "protocols": {"gpt-4o": {"protocol": "structured", "fallback": None}}, "deployments": {},
                         "recent_failures": {}, "recent_seconds": 300, "failures_total": {}}}

NOT_READY_EXAMPLE = {**READY_EXAMPLE, "sd": {"total": 0, "healthy": 0, "busy": 0, "waiting": 0, "closed": False,
                                             "instances": []}}

SYSTEM_PATHS = {
    "/ping": {
        method: {"tags": ["system"], "operationId": f"ping{method.title()}", "security": OPEN,
                 "summary": "Answer the plain text pong (liveness for the web client and curl)",
                 "responses": {"200": _text("pong", "pong"),
                               "403": {"$ref": "#/components/responses/Forbidden"},
                               "405": {"$ref": "#/components/responses/MethodNotAllowed"}}}
        for method in ("get", "post")
    },
    "/healthz": {"get": {
        "tags": ["system"], "operationId": "healthz", "security": OPEN,
        "summary": "Answer that the process is alive, without any I/O",
        "responses": {"200": ok("Alive.", Alive, {"status": "alive"}),
                      "405": {"$ref": "#/components/responses/MethodNotAllowed"}},
    }},
    "/readyz": {"get": {
        "tags": ["system"], "operationId": "readyz", "security": OPEN,
        "summary": "Say whether a generation can work now: database, Redis when set, GPT and a healthy SD instance",
        "description": "Cheap: one database ping, one Redis ping when REDIS_URL is set, and the backends' own "
                       "counters; no model is called. "
                       "For a researcher (from the server's machine, or with the token when one is set) "
                       "`data` holds the details and `message` says what is missing or degraded; anyone "
                       "else gets the same status and code, `data` null and a bare ready or not ready.",
        "responses": {
            "200": json_response("Ready (possibly degraded; see message).", success(Readiness | None),
                                 {"ready": answer(READY_EXAMPLE, message="ready")}),
            "503": json_response("Not ready: code 3 when the database is unreachable or its disk full, else 2.",
                                 failure(CODE_BACKEND, CODE_STORAGE, data=Readiness | None),
                                 {"no SD": answer(NOT_READY_EXAMPLE, CODE_BACKEND,
                                                  "not ready: no SD instances configured (set SD_ENDPOINTS)")}),
            "405": {"$ref": "#/components/responses/MethodNotAllowed"}},
    }},
    "/metrics": {"get": {
        "tags": ["system"], "operationId": "metrics",
        "summary": "Every metric in the Prometheus text format",
        "description": "Requests by route pattern, method and status; generation and step durations; the "
                       "SD pool's and the GPT client's counters, read at scrape time.",
        "responses": {"200": _text("Prometheus exposition (text format 0.0.4).",
                                   "# TYPE refinity_http_requests_total counter\n"),
                      **errors(401, 403, 405)},
    }},
    "/openapi.json": {"get": {
        "tags": ["documentation"], "operationId": "openapiDocument",
        "summary": "This OpenAPI 3.1 document (plain JSON, not in the envelope, so tools can read it)",
        "responses": {"200": {"description": "The document.", "content": {"application/json": {
            "schema": {"type": "object", "required": ["openapi", "info", "paths"]}}}},
            **errors(401, 403, 405)},
    }},
    "/docs": {"get": {
        "tags": ["documentation"], "operationId": "docsPage",
        "summary": "This document in Swagger UI; every asset comes from this server",
        "responses": {"200": _text("The page.", "<!doctype html>...", "text/html"), **errors(401, 403, 405)},
    }},
    "/docs/assets/{name}": {"get": {
        "tags": ["documentation"], "operationId": "docsAsset",
        "summary": "One script or style sheet of the docs page",
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                        "description": "swagger-ui.css, swagger-ui-bundle.js or docs.js."}],
        "responses": {"200": {"description": "The asset.", "content": {
            media: {"schema": {"type": "string"}} for media in ("text/css", "text/javascript")}},
            **errors(401, 403, 404, 405)},
    }},
}


# -- participant sessions ---------------------------------------------------------------------
EXAMPLE_ID = "6650c0ffee0000000000abcd"
EXAMPLE_TASK = "设计一款运动辅助产品"

SESSION_EXAMPLE = {"_id": EXAMPLE_ID, "username": "alice", "currentStage": "准备", "designTask": "",
                   "rapidDivergenceSchemes": [], "deepDivergenceSchemes": [], "convergenceSchemes": []}

SAVE_EXAMPLE = {"username": "alice", "data": {
    "designSchemes": {"准备": None, "快速发散": [{"name": "", "canvasImage": "data:image/png;base64,iVBORw0KGgo..."}],
                      "深入发散": [], "收敛": [], "完成": None, "禁止": None},
    "designTask": EXAMPLE_TASK, "currentStage": "快速发散"}}


# A session is answered as it was saved: its schemes are described as the save checked them.
SESSION = Schema(sessions.Session, "validation")


def _body(schema: Schema, example: Any) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema, "examples": {"client": {"value": example}}}}}


PAINT_PATHS = {
    "/paint/start": {"post": {
        "tags": ["sessions"], "operationId": "startSession", "security": OPEN,
        "summary": "Create the participant on first visit and return the stored session",
        "requestBody": _body(Schema(sessions.StartBody, "validation"), {"username": "alice"}),
        "responses": {"200": ok("The participant's session.", SESSION, SESSION_EXAMPLE),
                      **errors(400, 403, 405, 413, _503="StorageOrBodyMemoryUnavailable")},
    }},
    "/paint/save": {"post": {
        "tags": ["sessions"], "operationId": "saveSession", "security": OPEN,
        "summary": "Make the state sent the participant's current one, keeping the previous ones",
        "description": "The body carries the whole session, every sketch as a data URI, so its limit is "
                       "SAVE_MAX_CONTENT_LENGTH. Schemes are stored as opaque JSON and returned unchanged.",
        "requestBody": _body(Schema(sessions.SaveBody, "validation"), SAVE_EXAMPLE),
        "responses": {"200": ok("Saved.", None, None),
                      **errors(400, 403, 404, 405, 413, _503="StorageOrBodyMemoryUnavailable")},
    }},
    "/paint/history": {"get": {
        "tags": ["sessions"], "operationId": "listSaves",
        "summary": "List the participant's saves, newest first",
        "description": "Parameters other than username and limit are rejected (400).",
        "parameters": query_parameters(sessions.HistoryQuery),
        "responses": {"200": ok("The saves, newest first.", sessions.History, {"username": "alice", "saves": [{
            "id": EXAMPLE_ID, "revision": 3, "savedAt": "2024-05-24T09:30:00.123Z", "kind": "save",
            "currentStage": "快速发散", "designTask": EXAMPLE_TASK, "counts": {"快速发散": 2, "深入发散": 0, "收敛": 0}}]}),
            **errors(400, 401, 403, 404, 405, 503)},
    }},
    "/paint/history/{entry_id}": {"get": {
        "tags": ["sessions"], "operationId": "getSavedState",
        "summary": "Return one past state of a participant, in the shape of /paint/start",
        "parameters": [{"name": "entry_id", "in": "path", "required": True, "schema": Schema(Id, "validation"),
                        "description": "The `id` of a save in GET /paint/history."}],
        "responses": {"200": ok("The saved state.", SESSION, SESSION_EXAMPLE),
                      **errors(400, 401, 403, 404, 405, 503)},
    }},
}


# -- generation and its records ---------------------------------------------------------------
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

GENERATE_REQUEST, GENERATE_DATA = exchanges()
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": Schema(Id, "validation"),
          "description": "The job's id, its generation record's."}

_SUMMARY_EXAMPLE = {"_id": RECORD_ID, "createdAt": "2024-05-24T09:30:00.123Z",
                    "finishedAt": "2024-05-24T09:31:10.456Z", "durationMs": 70333, "appid": 0, "type": 0,
                    "username": None, "participant": {
                        "username": "alice", "method": "sketch", "candidates": ["alice"], "evidence": [
                            {"method": "sketch", "candidates": ["alice"], "detail": "1 of 1 sketch images in their saves"},
                            {"method": "client", "candidates": ["alice", "bob"],
                             "detail": "their last start or save came from 10.0.0.7 with the same User-Agent"}]},
                    "status": "succeeded", "error": None}
_CLUES_EXAMPLE = {"username": None, "sketches": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
                  "texts": [], "task": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
                  "client": {"address": "10.0.0.7", "userAgent": "Mozilla/5.0", "candidates": ["alice", "bob"]}}

GENERATE_PATHS = {
    "/generate": {"post": {
        "tags": ["generation"], "operationId": "generate", "security": OPEN,
        "summary": "Run one generation pipeline and answer its creatives",
        "description": "Every request that passes validation leaves a record (GET /generations), whether it "
                       "succeeds or fails; rejected ones leave none. A generation takes up to minutes.",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": Schema(GENERATE_REQUEST, "validation"),
            "examples": {name: {"value": value} for name, value in REQUEST_EXAMPLES.items()}}}},
        "responses": {"200": {**ok("The creatives.", GENERATE_DATA, RESPONSE_EXAMPLES["type 0"])},
                      **errors(400, 403, 405, 413, 429, 504, _503="BackendUnavailable", _422="InputDeclined",
                               _502="AnswerRejected")},
    }},
    "/generations": {"get": {
        "tags": ["records"], "operationId": "listGenerations",
        "summary": "List generation record summaries, newest first",
        "description": "`username` lists the generations attributed to that participant (see "
                       "`participant` in a summary). Parameters other than these four are rejected (400).",
        "parameters": query_parameters(limits.PageQuery),
        "responses": {"200": ok("A page of summaries.", limits.GenerationPage,
                                {"items": [_SUMMARY_EXAMPLE], "next": None}),
                      **errors(400, 401, 403, 405, 503)},
    }},
    "/generations/{record_id}": {"get": {
        "tags": ["records"], "operationId": "getGeneration", "summary": "Return one whole generation record",
        "parameters": [{"name": "record_id", "in": "path", "required": True, "schema": Schema(Id, "validation")}],
        "responses": {"200": ok("The record.", limits.GenerationRecord, {
            **_SUMMARY_EXAMPLE, "input": {"task": TASK, "num": 1}, "clues": _CLUES_EXAMPLE, "steps": [],
            "result": RESPONSE_EXAMPLES["type 0"]}), **errors(400, 401, 403, 404, 405, 503)},
    }},
    "/generations/{record_id}/participant": {"put": {
        "tags": ["records"], "operationId": "setGenerationParticipant",
        "summary": "Attribute one generation to a participant by hand",
        "description": "Recorded as method `manual`, which no later evidence changes; `null` gives the "
                       "generation back to its evidence. The username is not checked against the participants.",
        "parameters": [{"name": "record_id", "in": "path", "required": True, "schema": Schema(Id, "validation")}],
        "requestBody": _body(Schema(limits.ParticipantBody, "validation"), {"username": "alice"}),
        "responses": {"200": ok("The generation's attribution now.", limits.Attribution, {
            "username": "alice", "method": "manual", "candidates": ["alice"], "evidence": [
                {"method": "manual", "candidates": ["alice"], "detail": "set by a researcher at "
                                                                        "2024-05-24T10:00:00+00:00"}]}),
                      **errors(400, 401, 403, 404, 405, 413, 503)},
    }},
    "/jobs": {"post": {
        "tags": ["jobs"], "operationId": "submitJob",
        "summary": "Submit a generation as a job and answer at once",
        "description": "The body of /generate. The job runs as a /generate call would and leaves the same "
                       "record; follow it at `urls.self`, `urls.events` (Server-Sent Events) and cancel it at "
                       "`urls.cancel`.",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": Schema(GENERATE_REQUEST, "validation"),
            "examples": {name: {"value": value} for name, value in REQUEST_EXAMPLES.items()}}}},
        "responses": {"202": {**json_response("Queued.", success(jobs.Submitted), {"ok": answer({
            "id": RECORD_ID, "status": "queued", "urls": {
                "self": f"/jobs/{RECORD_ID}", "events": f"/jobs/{RECORD_ID}/events", "cancel": f"/jobs/{RECORD_ID}"}})}),
            "headers": {"Location": _header("The job's URL.", {"type": "string"})}},
            **errors(400, 401, 403, 405, 413, 429, _503="StorageOrBodyMemoryUnavailable")},
    }},
    "/jobs/{job_id}": {
        "get": {
            "tags": ["jobs"], "operationId": "getJob", "summary": "Answer a job's state, progress and result",
            "parameters": [JOB_ID],
            "responses": {"200": ok("The job.", jobs.JobView, {
                "id": RECORD_ID, "status": "running", "createdAt": "2024-05-24T09:30:00.123Z",
                "startedAt": "2024-05-24T09:30:00.130Z", "finishedAt": None,
                "progress": {"stepsDone": 4, "stepsTotal": 10, "imagesDone": 0, "imagesTotal": 6},
                "queuePosition": 3, "result": None, "error": None}), **errors(400, 401, 403, 404, 405, 503)},
        },
        "delete": {
            "tags": ["jobs"], "operationId": "cancelJob", "summary": "Cancel a job that has not ended",
            "description": "No step starts after; each image being drawn for the job is interrupted on the WebUI "
                           "instance drawing it (POST /sdapi/v1/interrupt), never on another. The job ends "
                           "`cancelled` shortly after the answer. With REDIS_URL set any server process of the "
                           "deployment cancels it; without, only the one running it can (another answers 409).",
            "parameters": [JOB_ID],
            "responses": {"202": json_response("Cancelling: the job as it is now.", success(jobs.JobView)),
                          **errors(400, 401, 403, 404, 405, 409, 503)},
        },
    },
    "/jobs/{job_id}/events": {"get": {
        "tags": ["jobs"], "operationId": "jobEvents", "summary": "Stream a job's events (Server-Sent Events)",
        "description": "Events, each with an increasing `id:`: `status` ({status}), `step` ({name, state: "
                       "started|finished|failed, attempt}), `progress` ({instance, progress, eta, step, steps, "
                       "and with ?preview=1 the WebUI's live preview as base64}), then `result` ({data}, "
                       "/generate's data) or `error` ({code, message, step}) last; the stream ends after it. "
                       "A comment line `: keep-alive` comes every JOB_KEEPALIVE seconds while nothing "
                       "happens. Send `Last-Event-ID` to resume after an event. With REDIS_URL set every "
                       "server process of the deployment streams them, with the same ids.",
        "parameters": [JOB_ID, *query_parameters(jobs.EventsQuery),
                       {"name": "Last-Event-ID", "in": "header", "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                        "description": "Resume after the event with this id."}],
        "responses": {"200": {"description": "The event stream.", "content": {"text/event-stream": {
            "schema": {"type": "string"},
            "example": "id: 1\nevent: status\ndata: {\"status\":\"queued\"}\n\n"}}},
            **errors(400, 401, 403, 404, 405, 503)},
    }},
    "/images/{key}": {"get": {
        "tags": ["records"], "operationId": "getImage",
        "summary": "Serve a stored image by its SHA-256 (case-insensitive)",
        "description": "Images never change under their hash: the answer is cacheable for good and "
                       "honours If-None-Match.",
        "parameters": [{"name": "key", "in": "path", "required": True, "schema": Schema(Sha256, "validation"),
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
                                   for kind in get_args(ImageType)},
                                "*/*": {"schema": {"type": "string"}}}},
            "304": {"description": "Not modified (If-None-Match named this image)."},
            **errors(400, 401, 403, 404, 405, 503)},
    }},
}


# -- the document -----------------------------------------------------------------------------
VERSION = "1.0.0"

DESCRIPTION = """\
The server behind the Refinity sketching client: participant sessions, creative stimuli from GPT and
Stable Diffusion, and the researcher's records of every generation.

**The envelope.** Every JSON answer, success or failure, is `{"success", "data", "code", "message"}`
(`/openapi.json` excepted: tools read it as plain OpenAPI); every answer's schema says what its
`code` means. The HTTP status is real (400, 401, 404, 405, 408, 413, 429, 503, 504) and the client
may read the body whatever it is.

**Slow clients.** Under gunicorn a request's head must arrive within REQUEST_READ_TIMEOUT seconds,
and its body within that again plus a second per REQUEST_MIN_RATE bytes; a slower one is answered
408 (code 1) on any route, and the connection closed.

**Bodies** are UTF-8 JSON sent with `Content-Type: application/json`. Strings are Unicode text:
a lone surrogate escape (`"\\ud800"`) anywhere in a body is refused with 400, and so are the
non-JSON constants `NaN` and `Infinity`. **Integers** are written without a fraction
or exponent (`6`, not `6.0`); booleans are never integers.

**Two surfaces.** The participant routes (`/ping`, `/paint/start`, `/paint/save`, `/generate`) are
the web client's and never need a token; a server may limit them to the client networks in
`ALLOWED_CLIENTS`, and with `PARTICIPANT_REGISTER` on to registered usernames (403 otherwise). Every
other route is a researcher route, this document and `/docs` included: it needs
`Authorization: Bearer <API_TOKEN>` (401), and while the server has no API_TOKEN it answers only
requests from the server's own machine (403). `/healthz` and `/readyz` answer anyone, `/readyz`
giving its details to researchers only. CORS preflights need nothing.

**CORS.** Every route answers `OPTIONS` preflights for the origins in `CORS_ORIGINS`.
"""

TAGS = [
    {"name": "sessions", "description": "A participant's session: created on first visit, saved after every sketch."},
    {"name": "generation", "description": "Creative stimuli for the study's stages."},
    {"name": "jobs", "description": "Generations as jobs: submit one, follow its events, cancel it."},
    {"name": "records", "description": "What every generation did, for the researchers."},
    {"name": "system", "description": "Probes and metrics."},
    {"name": "documentation", "description": "This document."},
]


@lru_cache(maxsize=1)
def _build() -> dict[str, Any]:
    document, models = written_schemas({
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
            "schemas": {},
            "responses": RESPONSES,
        },
    })
    document["components"]["schemas"].update(models)
    return document


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
@researcher
def openapi_document() -> Response:
    """Answer the OpenAPI document as plain JSON (not in the envelope), for tools."""
    return jsonify(build_document())


@bp.get("/docs")
@researcher
def docs() -> Response:
    """Answer the page that shows the document with Swagger UI."""
    info = build_document()["info"]
    html = render_template("openapi/docs.html", title=f"{info['title']} {info['version']}",
                           version=version("flask-swagger-ui"))
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


@bp.get("/docs/assets/<name>")
@researcher
def docs_asset(name: str) -> Response:
    """Serve one asset of the docs page; they change only with the package, so cache for a day."""
    if name not in ASSETS:
        raise NotFound(f"the docs page has no asset {name!r}")
    response = send_from_directory(ASSETS[name], name, max_age=86400)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
