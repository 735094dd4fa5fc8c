"""Responses: success envelopes around each route's data, and the reusable failure answers."""
from __future__ import annotations

from typing import Any

from apps.openapi.schemas import ref
from core.envelope import CODE_BACKEND, CODE_BUSINESS, CODE_STORAGE

JSON = "application/json"


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
    "BackendUnavailable": json_response(
        "A generative backend failed (code 2, the message names the pipeline step), or the database is "
        "unreachable (code 3).",
        failure(CODE_BACKEND, CODE_STORAGE),
        {"backend": example("rapid.images: no Stable Diffusion instance is available", CODE_BACKEND)}),
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
