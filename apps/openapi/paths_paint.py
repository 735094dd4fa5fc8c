"""The participant session routes: /paint/start, /paint/save and the save history."""
from __future__ import annotations

from typing import Any

from apps.openapi.responses import JSON, errors, ok
from apps.openapi.schemas import ref
from apps.paint import sessions as limits
from apps.paint.sessions import SCHEME_FIELDS, STAGES

EXAMPLE_ID = "6650c0ffee0000000000abcd"
EXAMPLE_TASK = "设计一款运动辅助产品"
UNUSED_STAGES = [stage for stage in STAGES if stage not in SCHEME_FIELDS]

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

DESIGN_SCHEMES = {
    "type": "object",
    "description": "The schemes of each stage. Unknown stage names are rejected; "
                   f"{', '.join(UNUSED_STAGES)} are read as nothing (the client sends null).",
    "additionalProperties": False,
    "properties": {
        **{stage: {"anyOf": [{"type": "array", "maxItems": limits.MAX_SCHEMES_PER_STAGE, "items": ref("Scheme")},
                             {"type": "null"}],
                   "description": f"Becomes {field}; null or absent means none."}
           for stage, field in SCHEME_FIELDS.items()},
        **{stage: {"description": "Ignored."} for stage in UNUSED_STAGES},
    },
}

SAVE_REQUEST = {
    "type": "object",
    "required": ["username", "data"],
    "properties": {
        "username": ref("Username"),
        "data": {
            "type": "object",
            "required": ["designSchemes", "designTask", "currentStage"],
            "properties": {
                "designSchemes": DESIGN_SCHEMES,
                "designTask": {"type": "string", "maxLength": limits.MAX_TASK},
                "currentStage": ref("Stage"),
            },
        },
    },
}

SAVE_EXAMPLE = {"username": "alice", "data": {
    "designSchemes": {"准备": None, "快速发散": [{"name": "", "canvasImage": "data:image/png;base64,iVBORw0KGgo..."}],
                      "深入发散": [], "收敛": [], "完成": None, "禁止": None},
    "designTask": EXAMPLE_TASK, "currentStage": "快速发散"}}

SAVE_SUMMARY = {
    "type": "object",
    "required": ["id", "revision", "savedAt", "kind", "currentStage", "designTask", "counts"],
    "additionalProperties": False,
    "properties": {
        "id": ref("ObjectId"),
        "revision": {"type": "integer", "minimum": 0},
        "savedAt": {"type": "string", "format": "date-time"},
        "kind": {"type": "string", "enum": ["save", "legacy"],
                 "description": "legacy: the state of a participant stored in the old one-document format."},
        "currentStage": ref("Stage"),
        "designTask": {"type": "string"},
        "counts": {"type": "object", "description": "How many schemes each stage held.",
                   "required": list(SCHEME_FIELDS), "additionalProperties": False,
                   "properties": {stage: {"type": "integer", "minimum": 0} for stage in SCHEME_FIELDS}},
    },
}

HISTORY = {
    "type": "object",
    "required": ["username", "saves"],
    "additionalProperties": False,
    "properties": {"username": {"type": "string"}, "saves": {"type": "array", "items": ref("SaveSummary")}},
}

SCHEMAS = {"Session": SESSION, "SaveRequest": SAVE_REQUEST, "SaveSummary": SAVE_SUMMARY, "History": HISTORY}


def _body(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema, "examples": {"client": {"value": example}}}}}


PATHS = {
    "/paint/start": {"post": {
        "tags": ["sessions"], "operationId": "startSession",
        "summary": "Create the participant on first visit and return the stored session",
        "requestBody": _body({"type": "object", "required": ["username"],
                              "properties": {"username": ref("Username")}}, {"username": "alice"}),
        "responses": {"200": ok("The participant's session.", ref("Session"), SESSION_EXAMPLE),
                      **errors(400, 401, 405, 413, 503)},
    }},
    "/paint/save": {"post": {
        "tags": ["sessions"], "operationId": "saveSession",
        "summary": "Make the state sent the participant's current one, keeping the previous ones",
        "description": "The body carries the whole session, every sketch as a data URI, so its limit is "
                       "SAVE_MAX_CONTENT_LENGTH. Schemes are stored as opaque JSON and returned unchanged.",
        "requestBody": _body(ref("SaveRequest"), SAVE_EXAMPLE),
        "responses": {"200": ok("Saved.", {"type": "null"}, None), **errors(400, 401, 404, 405, 413, 503)},
    }},
    "/paint/history": {"get": {
        "tags": ["sessions"], "operationId": "listSaves",
        "summary": "List the participant's saves, newest first",
        "description": "Parameters other than username and limit are rejected (400).",
        "parameters": [
            {"name": "username", "in": "query", "required": True, "schema": ref("Username")},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": limits.MAX_HISTORY_LIMIT,
                        "default": limits.DEFAULT_HISTORY_LIMIT}},
        ],
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
