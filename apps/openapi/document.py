"""The OpenAPI 3.1 document of the API, assembled from the per-area modules beside this one."""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from apps.openapi import paths_generate, paths_paint, paths_system
from apps.openapi.responses import RESPONSES
from apps.openapi.schemas import COMMON

VERSION = "1.0.0"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

DESCRIPTION = """\
The server behind the Refinity sketching client: participant sessions, creative stimuli from GPT and
Stable Diffusion, and the researcher's records of every generation.

**The envelope.** Every JSON answer, success or failure, is `{"success", "data", "code", "message"}`
(`/openapi.json` excepted: tools read it as plain OpenAPI). `code` 0 is success, 1 a business failure,
2 a generative backend failure, 3 a database failure. The HTTP status is real (400, 401, 404, 405,
413, 429, 503, 504) and the client may read the body whatever it is.

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


@lru_cache(maxsize=1)
def _build() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Refinity API", "version": VERSION, "description": DESCRIPTION},
        "tags": TAGS,
        # Either no token (API_TOKEN unset) or the bearer token satisfies the API.
        "security": [{}, {"bearerAuth": []}],
        "paths": {**paths_system.PATHS, **paths_paint.PATHS, **paths_generate.PATHS},
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "The server's API_TOKEN; required only when the server sets one."}},
            "schemas": {**COMMON, **paths_paint.SCHEMAS, **paths_generate.SCHEMAS, **paths_system.SCHEMAS},
            "responses": RESPONSES,
        },
    }


def build_document() -> dict[str, Any]:
    """Return a fresh copy of the API's OpenAPI document."""
    return copy.deepcopy(_build())


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Return (path, method, operation) for every operation of `document`, in document order."""
    return [(path, method, item[method]) for path, item in document["paths"].items()
            for method in METHODS if method in item]
