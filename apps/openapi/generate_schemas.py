"""Schemas of POST /generate: the prompts of each type and the creatives each type answers."""
from __future__ import annotations

from typing import Any

import config
from apps.openapi.schemas import INT64_MAX, INT64_MIN, nullable, ref
from apps.paint.pipelines import creatives
from apps.paint.pipelines import inputs as limits

# A custom format: the bytes behind it are checked, which JSON Schema cannot express.
IMAGE_FORMAT = "image-data-uri"

COUNT = {"type": "integer", "minimum": 1, "maximum": limits.MAX_COUNT}
TEXTS = {"type": "array", "maxItems": limits.MAX_TEXTS, "description": "The sketch's text notes.",
         "items": {"type": "string", "maxLength": limits.MAX_TEXT}}
SKETCH_IMAGE = {"type": "string", "format": IMAGE_FORMAT,
                "description": "The sketch as a data URI of a PNG, JPEG or WebP image "
                               "(`data:image/png;base64,...`; raw base64 is accepted too). "
                               "The decoded bytes must really be such an image."}
TASK = {"type": "string", "maxLength": limits.MAX_TASK, "description": "The design task; may be empty."}
B64 = {"type": "string", "minLength": 4, "pattern": "^[A-Za-z0-9+/]*={0,2}$", "contentEncoding": "base64",
       "description": "Raw base64 of an image, without a data: prefix; show it as "
                      "`data:image/jpeg;base64,` + image."}


def _object(required: list[str], properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties, **extra}


def _group_two_total() -> dict[str, Any]:
    """Return the rule `len(selectedSchemes) * num <= MAX_COUNT` as one branch per reachable maximum."""
    branches: dict[int, list[int]] = {}
    for num in range(1, limits.MAX_COUNT + 1):
        branches.setdefault(limits.MAX_COUNT // num, []).append(num)
    return {"anyOf": [{"properties": {"num": {"minimum": nums[0], "maximum": nums[-1]},
                                      "selectedSchemes": {"maxItems": most}}}
                      for most, nums in branches.items()]}


PROMPTS = {
    "RapidPrompts": _object(["task", "num"], {
        "task": {**TASK, "pattern": "\\S", "description": "The design task; not blank."},
        "num": {**COUNT, "description": "How many product ideas (the client asks for 6)."}}),
    "DeepPrompts": _object(["designTask", "designTexts", "designImage", "schemeId"], {
        "designTask": TASK, "designTexts": TEXTS, "designImage": SKETCH_IMAGE,
        "schemeId": {"anyOf": [{"type": "string", "maxLength": limits.MAX_SCHEME_ID},
                               {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}],
                     "description": "The client's id of the sketch, echoed in the answer."}}),
    "NamingPrompts": _object(["designTask", "selectNum", "schemes"], {
        "designTask": TASK,
        "selectNum": {**COUNT, "description": "How many schemes to select (never more than there are)."},
        "schemes": {"type": "array", "minItems": 1, "maxItems": limits.MAX_COUNT,
                    "items": _object(["designTexts", "designImage"],
                                     {"designTexts": TEXTS, "designImage": SKETCH_IMAGE})}}),
    "GroupTwoPrompts": _object(["selectedSchemes", "num"], {
        "selectedSchemes": {"type": "array", "minItems": 1, "maxItems": limits.MAX_COUNT,
                            "items": _object(["designTexts"], {"designTexts": TEXTS})},
        "num": {**COUNT, "description": "Stimuli per scheme (the client sends 3 for one scheme, 2 for "
                                        f"two, 1 for more); at most {limits.MAX_COUNT} in all."}},
        allOf=[_group_two_total()]),
}

TYPES = {0: ("Rapid", "rapid divergence"), 1: ("Deep", "deep divergence"),
         2: ("Naming", "convergence, naming and selection"), 3: ("GroupTwo", "convergence, group two")}

REQUESTS = {
    f"Generate{name}": _object(["appid", "type", "prompts"], {
        "appid": {"type": "integer", "const": config.APP_PAINT, "description": "The sketching app."},
        "type": {"type": "integer", "const": type_, "description": label},
        "username": {**nullable(ref("Username")), "description": "Who asks, for the record; optional."},
        "prompts": ref(f"{name}Prompts")}, title=f"type {type_}: {label}")
    for type_, (name, label) in TYPES.items()
}
REQUESTS["GenerateRequest"] = {"oneOf": [ref(f"Generate{name}") for name, _ in TYPES.values()],
                               "description": "Unknown appid or type, or prompts of the wrong shape, answer 400."}


def _item(kind: str, *, text: bool = False, image: bool = False, combinations: list | None = None) -> dict:
    return _object(["type", "text", "image", "combinations"], {
        "type": {"const": kind},
        "text": {"type": "string"} if text else {"type": "null"},
        "image": ref("Base64Image") if image else {"type": "null"},
        "combinations": {"type": "array", "prefixItems": combinations, "minItems": len(combinations),
                         "maxItems": len(combinations)} if combinations else {"type": "null"},
    }, additionalProperties=False)


ABSTRACT_IMAGE, ABSTRACT_TEXT = _item("abstractImage", image=True), _item("abstractText", text=True)
CONCRETE_IMAGE, CONCRETE_TEXT = _item("concreteImage", image=True), _item("concreteText", text=True)


def _creative(type_: int, display: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return _object(["type", "displayType", "items"], {
        "type": {"const": type_}, "displayType": {"const": display},
        "items": {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)},
    }, additionalProperties=False)


def _cards(name: str) -> dict[str, Any]:
    return {"type": "array", "items": ref(name)}


RESULTS = {
    "Base64Image": B64,
    "RapidCreative": _creative(creatives.RAPID_ABSTRACT, "sequence", [ABSTRACT_IMAGE, ABSTRACT_TEXT]),
    "DeepCreative": _creative(creatives.DEEP, "sequence", [ABSTRACT_IMAGE, ABSTRACT_TEXT, CONCRETE_TEXT]),
    "GroupTwoCreative": _creative(creatives.GROUP_TWO, "direct", [
        _item("groupTypeTwo", combinations=[ABSTRACT_IMAGE, CONCRETE_IMAGE, CONCRETE_TEXT])]),
    "RapidData": _object(["count", "result"], {"count": {"type": "integer", "minimum": 0},
                                               "result": _cards("RapidCreative")},
                         additionalProperties=False, title="type 0"),
    "DeepData": _object(["schemeId", "count", "result"], {
        "schemeId": {"type": ["integer", "string"], "description": "As sent."},
        "count": {"type": "integer", "minimum": 0}, "result": _cards("DeepCreative")},
        additionalProperties=False, title="type 1"),
    "NamingData": _object(["names", "selected"], {
        "names": {"type": "array", "items": {"type": "string"}, "description": "One per scheme, in order."},
        "selected": {"type": "array", "items": {"type": "string"}, "description": "Chosen names, each one of names."}},
        additionalProperties=False, title="type 2"),
    "GroupTwoData": _object(["result"], {"result": _cards("GroupTwoCreative")},
                            additionalProperties=False, title="type 3"),
}
RESULTS["GenerateData"] = {"oneOf": [ref(f"{name}Data") for name, _ in TYPES.values()],
                           "description": "The data of the type asked for."}

SCHEMAS = {**PROMPTS, **REQUESTS, **RESULTS}
