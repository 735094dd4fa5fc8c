"""Checks against the OpenAPI document, shared by test_openapi.py and test_fuzz.py.

`check_response` validates a real answer against what the document says that operation
answers for that status; `conforms` says whether a request value is one the document
accepts, with the rules its description states in words (integers have no fraction,
strings no lone surrogates, a sketch's bytes are an image), which schemathesis's JSON Schema
validation cannot know; `schema_accepts` whether the schema alone does, as any tool reads it.
"""
from __future__ import annotations

import math
import re
from typing import Any

from flask import Flask
from jsonschema import Draft202012Validator, FormatChecker, validators
from werkzeug.routing import Rule
from werkzeug.test import TestResponse

from apps.openapi import build_document
from core.image_store import IMAGE_FORMAT, ImageDecodeError, decode_image
from core.security import PAGES, surface_of

DOC = build_document()
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Return (path, method, operation) for every operation of `document`, in document order."""
    return [(path, method, item[method]) for path, item in document["paths"].items()
            for method in METHODS if method in item]
JSON = "application/json"
_SURROGATE = re.compile("[\ud800-\udfff]")
_RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def _image(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats only constrain strings
    try:
        decode_image(value)
    except ImageDecodeError:
        return False
    return True


FORMATS = FormatChecker()
FORMATS.checks(IMAGE_FORMAT)(_image)


def _is_integer(checker: Any, value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The server takes integers as Python's parser gives them: `6.0` is a float, not an integer.
StrictValidator = validators.extend(
    Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer))


def validator(schema: dict[str, Any], formats: FormatChecker | None = FORMATS) -> Draft202012Validator:
    """Return a validator of `schema` whose #/components references resolve in the document."""
    return StrictValidator({**schema, "components": DOC["components"]}, format_checker=formats)


def assert_valid(value: Any, schema: dict[str, Any], what: str) -> None:
    """Fail with every error when `value` does not validate against `schema`."""
    errors = sorted(validator(schema).iter_errors(value), key=lambda e: list(e.absolute_path))
    assert not errors, f"{what}: " + "; ".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors[:5])


def _plain(value: Any) -> bool:
    """Return whether `value` is JSON a strict parser accepts: finite numbers, no lone surrogates."""
    if isinstance(value, str):
        return _SURROGATE.search(value) is None
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    return True


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """Return whether the document accepts `value` for `schema` (strings must be Unicode text)."""
    return _plain(value) and validator(schema).is_valid(value)


def schema_accepts(value: Any, schema: dict[str, Any]) -> bool:
    """Return whether `schema` by itself accepts `value`: formats are only notes, as JSON Schema 2020-12 has it."""
    return validator(schema, formats=None).is_valid(value)


def api_rules(app: Flask) -> list[Rule]:
    """Return the rules of the JSON API, which the document describes: all but the dashboard's pages."""
    return [rule for rule in app.url_map.iter_rules() if surface_of(app, rule.endpoint) not in PAGES]


def template(rule: str) -> str:
    """Return the OpenAPI path template of a Flask rule (`/a/<x>` -> `/a/{x}`)."""
    return _RULE_ARGUMENT.sub(r"{\1}", rule)


def component(kind: str, name: str) -> dict[str, Any]:
    """Return the component `name` of `kind` (schemas, responses, ...)."""
    return DOC["components"][kind][name]


def _resolve(item: dict[str, Any], kind: str) -> dict[str, Any]:
    if "$ref" in item:
        return component(kind, item["$ref"].rsplit("/", 1)[-1])
    return item


def documented(path: str, method: str, status: int) -> dict[str, Any]:
    """Return the response the document gives `method path` for `status` (or its default)."""
    responses = DOC["paths"][path][method.lower()]["responses"]
    spec = responses.get(str(status)) or responses.get("default")
    assert spec is not None, f"{method} {path} answered {status}, which the document does not list"
    return _resolve(spec, "responses")


def is_envelope(response: TestResponse) -> bool:
    """Return whether `response` is JSON in the envelope."""
    body = response.get_json(silent=True)
    return isinstance(body, dict) and set(body) == {"success", "data", "code", "message"}


def check_spec(response: TestResponse, spec: dict[str, Any], what: str) -> None:
    """Assert that `response` has the media type, body and headers that `spec` documents."""
    content = spec.get("content")
    if not content:
        assert not response.get_data(), f"{what}: a body where none is documented"
        return
    media = _media(response.mimetype, content)
    assert media is not None, f"{what}: {response.mimetype} is not one of {sorted(content)}"
    for header, documented in spec.get("headers", {}).items():
        if documented.get("required"):
            assert header in response.headers, f"{what}: header {header} is missing"
    if media == JSON:
        assert_valid(response.get_json(), content[media]["schema"], what)
    elif media.startswith("text/"):
        assert_valid(response.get_data(as_text=True), content[media]["schema"], what)
    # anything else is bytes: the media type was the check


def _media(mimetype: str, content: dict[str, Any]) -> str | None:
    """Return the documented media type (or range) that `mimetype` falls under."""
    for candidate in (mimetype, f"{mimetype.split('/')[0]}/*", "*/*"):
        if candidate in content:
            return candidate
    return None


def check_response(path: str, method: str, response: TestResponse) -> None:
    """Assert that `response` to `method path` (a documented template) is what the document says."""
    what = f"{method.upper()} {path} -> {response.status_code}"
    check_spec(response, documented(path, method, response.status_code), what)


def request_schema(path: str, method: str) -> dict[str, Any] | None:
    """Return the JSON body schema of an operation, or None when it takes no body."""
    body = DOC["paths"][path][method].get("requestBody")
    return body["content"][JSON]["schema"] if body else None
