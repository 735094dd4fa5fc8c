"""POST /generate and the researcher's routes over its records: /generations and /images."""
from __future__ import annotations

from apps import records as limits
from apps.openapi.generate_schemas import SCHEMAS as GENERATE_SCHEMAS
from apps.openapi.responses import errors, ok
from apps.openapi.schemas import nullable, ref

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

SUMMARY = {
    "type": "object",
    "required": ["_id", *limits.SUMMARY_FIELDS],
    "additionalProperties": False,
    "properties": {
        "_id": ref("ObjectId"),
        "createdAt": {"type": "string", "format": "date-time"},
        "finishedAt": {"type": "string", "format": "date-time"},
        "durationMs": {"type": "integer", "minimum": 0},
        "appid": {"type": "integer"},
        "type": {"type": "integer"},
        "username": nullable({"type": "string"}),
        "status": {"type": "string", "enum": ["ok", "failed"]},
        "error": nullable({"type": "object", "required": ["step", "message", "kind"],
                           "properties": {"step": nullable({"type": "string"}), "message": {"type": "string"},
                                          "kind": {"type": "string", "description": "The exception's class."}}}),
    },
}

RECORD = {
    "allOf": [{**SUMMARY, "additionalProperties": True}],
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

PAGE = {
    "type": "object",
    "required": ["items", "next"],
    "additionalProperties": False,
    "properties": {"items": {"type": "array", "items": ref("GenerationSummary")},
                   "next": {**nullable(ref("ObjectId")), "description": "`before` of the next page; null at the end."}},
}

SCHEMAS = {**GENERATE_SCHEMAS, "GenerationSummary": SUMMARY, "GenerationRecord": RECORD, "GenerationPage": PAGE}

_SUMMARY_EXAMPLE = {"_id": RECORD_ID, "createdAt": "2024-05-24T09:30:00.123Z",
                    "finishedAt": "2024-05-24T09:31:10.456Z", "durationMs": 70333, "appid": 0, "type": 0,
                    "username": "alice", "status": "ok", "error": None}
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")

PATHS = {
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
        "parameters": [
            {"name": "username", "in": "query", "schema": ref("Username")},
            {"name": "type", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": limits.MAX_TYPE}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                        "maximum": limits.MAX_LIMIT, "default": limits.DEFAULT_LIMIT}},
            {"name": "before", "in": "query", "description": "A record id (the page starts after it) or an "
             "ISO-8601 time (records created strictly before it; UTC when no offset is given).",
             "schema": {"anyOf": [ref("ObjectId"), {"type": "string", "format": "date-time"}]}},
        ],
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
