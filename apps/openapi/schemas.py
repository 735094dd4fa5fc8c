"""Schemas shared by several routes: the envelope, names, ids, stages and opaque client JSON.

Limits come from the validators themselves (core.validation, the routes' input modules),
so the document cannot drift from what the server really accepts.
"""
from __future__ import annotations

from typing import Any

from apps.paint.sessions import STAGES
from core import validation as v
from core.envelope import CODE_BACKEND, CODE_BUSINESS, CODE_OK, CODE_STORAGE

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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

USERNAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": v.MAX_USERNAME,
    # Not blank (Python's notion of whitespace, as str.strip() uses) and no NUL anywhere.
    "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$",
    "description": f"The participant's name: 1-{v.MAX_USERNAME} characters, not only whitespace, no NUL.",
    "examples": ["alice"],
}

OBJECT_ID = {
    "type": "string",
    "minLength": 24,
    "maxLength": 24,
    "pattern": "^[0-9a-fA-F]{24}$",
    "description": "A MongoDB ObjectId as 24 hex characters.",
    "examples": ["6650c0ffee0000000000abcd"],
}

SHA256 = {
    "type": "string",
    "minLength": 64,
    "maxLength": 64,
    "pattern": "^[0-9a-fA-F]{64}$",
    "description": "The SHA-256 of an image's bytes, 64 hex characters.",
}

STAGE = {
    "type": "string",
    "enum": list(STAGES),
    "description": "A study stage, as the client spells it: 准备 (not ready), 快速发散 (rapid divergence), "
                   "深入发散 (deep divergence), 收敛 (convergence), 完成 (finished), 禁止 (disabled).",
}

# Any JSON MongoDB stores as given. Depth (at most core.validation.MAX_DEPTH levels) is not
# expressible in JSON Schema; the description says it.
STORABLE_VALUE = {
    "description": f"Any JSON value that MongoDB can store unchanged: object keys do not start with '$' "
                   f"and contain no '.' or NUL, integers fit in 64 bits, nesting is at most "
                   f"{v.MAX_DEPTH} levels deep.",
    "anyOf": [
        {"type": ["null", "boolean", "string"]},
        {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
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
