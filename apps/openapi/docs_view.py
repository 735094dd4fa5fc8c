"""Turn the OpenAPI document into what the /docs template shows: operations, fields and examples."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from apps.openapi.document import operations


@dataclass
class Field:
    """One row of a field table: a dotted name, its type and rules, and what it means."""

    name: str
    kind: str
    required: bool
    description: str
    link: str | None = None  # the component schema the type names, if any


@dataclass
class Answer:
    """One documented response of an operation."""

    status: str
    description: str
    media: list[str]
    schema: str
    link: str | None
    examples: list[tuple[str, str]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)


def _name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _range(schema: dict[str, Any], low: str, high: str, unit: str = "") -> str:
    lo, hi = schema.get(low), schema.get(high)
    if lo is None and hi is None:
        return ""
    if lo == hi:
        return f", exactly {lo}{unit}"
    if lo is not None and hi is not None:
        return f", {lo}..{hi}{unit}"
    return f", ≥ {lo}{unit}" if lo is not None else f", ≤ {hi}{unit}"


def kind(schema: Any) -> str:
    """Return a short human reading of `schema`'s type and rules."""
    if not isinstance(schema, dict) or not schema:
        return "any JSON"
    if "$ref" in schema:
        return _name(schema["$ref"])
    if "const" in schema:
        return f"always {json.dumps(schema['const'], ensure_ascii=False)}"
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    for combinator, word in (("oneOf", "exactly one of"), ("anyOf", "any of"), ("allOf", "all of")):
        if combinator in schema and "type" not in schema:
            return f"{word}: " + " | ".join(kind(part) for part in schema[combinator])
    types = schema.get("type", "any JSON")
    text = " or ".join(types) if isinstance(types, list) else types
    if text == "array":
        count = _range(schema, "minItems", "maxItems", " items").lstrip(", ")
        text = f"array ({count}) of {kind(schema.get('items'))}" if count else f"array of {kind(schema.get('items'))}"
    text += _range(schema, "minimum", "maximum") + _range(schema, "minLength", "maxLength", " chars")
    for rule in ("pattern", "format"):
        if rule in schema:
            text += f", {rule} {schema[rule]}"
    return text


def fields(schema: Any, prefix: str = "") -> list[Field]:
    """Return the rows of an object schema, expanding inline objects and arrays of them."""
    if not isinstance(schema, dict) or "properties" not in schema:
        return []
    required = set(schema.get("required", []))
    rows = []
    for name, sub in schema["properties"].items():
        full = f"{prefix}{name}"
        link = _name(sub["$ref"]) if isinstance(sub, dict) and "$ref" in sub else None
        meaning = sub.get("description", "") if isinstance(sub, dict) else ""
        rows.append(Field(full, kind(sub), name in required, meaning, link))
        if isinstance(sub, dict):
            rows += fields(sub, f"{full}.")
            rows += fields(sub.get("items"), f"{full}[].")
    return rows


def _pretty(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, indent=2)
    return text if len(text) < 4000 else text[:4000] + "\n…"


def _examples(media: dict[str, Any]) -> list[tuple[str, str]]:
    if "example" in media:
        return [("example", media["example"] if isinstance(media["example"], str) else _pretty(media["example"]))]
    return [(name, _pretty(ex.get("value"))) for name, ex in media.get("examples", {}).items()]


def _answer(status: str, response: dict[str, Any], document: dict[str, Any]) -> Answer:
    link = None
    if "$ref" in response:
        link = _name(response["$ref"])
        response = document["components"]["responses"][link]
    content = response.get("content", {})
    first = next(iter(content.values()), {})
    schema = first.get("schema")
    data = (schema or {}).get("properties", {}).get("data") if isinstance(schema, dict) else None
    shown = f"envelope, data: {kind(data)}" if data is not None else (kind(schema) if schema else "no body")
    examples = [ex for media in content.values() for ex in _examples(media)]
    headers = [(name, spec.get("description", "")) for name, spec in response.get("headers", {}).items()]
    return Answer(status, response.get("description", ""), list(content), shown, link, examples, headers)


def _variants(schema: dict[str, Any], document: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the field tables of a body schema: one, or one per alternative of a oneOf."""
    schemas = document["components"]["schemas"]
    if "$ref" in schema:
        schema = schemas[_name(schema["$ref"])]
    if "oneOf" not in schema:
        return [{"title": "", "fields": fields(schema)}]
    parts = [schemas[_name(part["$ref"])] if "$ref" in part else part for part in schema["oneOf"]]
    return [{"title": part.get("title", ""), "fields": fields(part)} for part in parts]


def page(document: dict[str, Any]) -> dict[str, Any]:
    """Return the template context of the docs page."""
    tagged: dict[str, list[dict[str, Any]]] = {tag["name"]: [] for tag in document.get("tags", [])}
    for path, method, op in operations(document):
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        body_schema = body["schema"] if body else None
        tagged.setdefault(op.get("tags", ["other"])[0], []).append({
            "anchor": op.get("operationId", f"{method}-{path}"), "method": method.upper(), "path": path,
            "summary": op.get("summary", ""), "description": op.get("description", ""),
            "open": op.get("security") == [{}],
            "parameters": [Field(p["name"], kind(p.get("schema")), bool(p.get("required")),
                                 f"in {p['in']}. {p.get('description', '')}") for p in op.get("parameters", [])],
            "body_kind": kind(body_schema) if body_schema else None,
            "body_variants": _variants(body_schema, document) if body_schema else [],
            "body_examples": _examples(body) if body else [],
            "answers": [_answer(status, response, document) for status, response in op["responses"].items()],
        })
    shared = [{"name": name, **vars(_answer("", response, document))}
              for name, response in document["components"]["responses"].items()]
    schemas = [{"name": name, "kind": kind(schema), "description": schema.get("description", ""),
                "fields": fields(schema)} for name, schema in document["components"]["schemas"].items()]
    return {"info": document["info"], "tags": document.get("tags", []), "groups": tagged,
            "responses": shared, "schemas": schemas}


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def markdown_inline(text: str) -> Markup:
    """Return `text` as escaped HTML with its **bold** and `code` spans."""
    html = str(escape(text))
    return Markup(_CODE.sub(r"<code>\1</code>", _BOLD.sub(r"<strong>\1</strong>", html)))


def markdown_blocks(text: str) -> Markup:
    """Return `text` as HTML paragraphs (split at blank lines) of inline markdown."""
    return Markup("".join(f"<p>{markdown_inline(part)}</p>" for part in text.split("\n\n") if part.strip()))
