"""Schemas of POST /generate, made from the pipelines' own models: the prompts and the answer of each type.

Nothing here restates a limit or a shape: `apps.paint.pipelines.PIPELINES` names each
type's prompts and answer model, and pydantic writes their JSON schemas, so the document
says exactly what the server checks and sends.
"""
from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

import config
from apps.openapi.schemas import nullable, ref
from apps.paint.pipelines import PIPELINES

# The format of a sketch a client sends (core.image_store.SketchImage): its bytes are checked,
# which JSON Schema cannot express.
IMAGE_FORMAT = "image-data-uri"

TYPES = {0: "rapid divergence", 1: "deep divergence", 2: "convergence, naming and selection",
         3: "convergence, group two"}


def _model_schemas() -> dict[str, Any]:
    models = [(p.prompts, "validation") for p in PIPELINES.values()]
    models += [(p.answer, "serialization") for p in PIPELINES.values()]
    _, top = models_json_schema(models, by_alias=True, ref_template="#/components/schemas/{model}")
    return top["$defs"]


def _name(model: type) -> str:
    return model.__name__


REQUESTS = {
    f"Generate{_name(p.prompts).removesuffix('Prompts')}": {
        "type": "object", "required": ["appid", "type", "prompts"], "title": f"type {type_}: {TYPES[type_]}",
        "properties": {
            "appid": {"type": "integer", "const": config.APP_PAINT, "description": "The sketching app."},
            "type": {"type": "integer", "const": type_, "description": TYPES[type_]},
            "username": {**nullable(ref("Username")), "description": "Who asks, for the record; optional."},
            "prompts": ref(_name(p.prompts))}}
    for type_, p in PIPELINES.items()
}
REQUESTS["GenerateRequest"] = {"oneOf": [ref(name) for name in REQUESTS],
                               "description": "Unknown appid or type, or prompts of the wrong shape, answer 400."}
RESULTS = {"GenerateData": {"oneOf": [ref(_name(p.answer)) for p in PIPELINES.values()],
                            "description": "The data of the type asked for."}}

SCHEMAS = {**_model_schemas(), **REQUESTS, **RESULTS}
