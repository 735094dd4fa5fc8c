"""Routes about the server itself: probes, metrics and this documentation."""
from __future__ import annotations

from apps.openapi.responses import errors, failure, json_response, ok, success
from apps.openapi.schemas import nullable
from core.envelope import CODE_BACKEND, CODE_STORAGE

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

SCHEMAS = {"Readiness": READINESS}

PATHS = {
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
