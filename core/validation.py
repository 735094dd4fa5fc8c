"""Checks at the boundary: every value a client sends is checked here before it is used.

Each helper returns the value when it is right and raises `BadInput` naming the field
when it is not, so views read as a list of rules.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from typing import Any

from flask import request

from core.envelope import BadInput

MAX_USERNAME = 128
MAX_DEPTH = 40  # BSON nesting stops at 100; the client's schemes need about 5
# JSON may escape lone UTF-16 surrogates ("\ud800"); Python keeps them, but no UTF-8 (so no
# BSON, log line or HTTP body) can hold them. Strictly decoded UTF-8 cannot carry one, so
# only a body with such an escape needs the walk over its strings.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _NotJSON(ValueError):
    """The body uses NaN or Infinity, which Python's parser accepts but JSON has not."""


def _reject_constant(name: str) -> None:
    raise _NotJSON(name)


def _has_lone_surrogate(value: Any) -> bool:
    """Return whether any string (or key) in parsed JSON holds a lone surrogate."""
    stack = [value]  # a loop, not recursion: the parser allows deeper nesting than a walk would
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def json_object() -> dict[str, Any]:
    """Return the request body as a JSON object, or raise BadInput."""
    if not request.is_json:
        raise BadInput("body", "must be JSON, sent with Content-Type: application/json")
    try:
        # Not cached: a save body may be hundreds of MB, so let the raw bytes go once decoded.
        # Strict UTF-8 (RFC 8259), unlike json.loads on bytes, which lets encoded surrogates pass.
        text = request.get_data(cache=False).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput("body", "is not valid JSON: it must be UTF-8 text") from None
    escaped = _SURROGATE_ESCAPE.search(text) is not None  # most bodies have none: skip the walk
    try:
        # NaN and Infinity would be stored, then sent back as JSON no browser can parse.
        body = json.loads(text, parse_constant=_reject_constant)
    except _NotJSON as e:
        raise BadInput("body", f"is not valid JSON: {e} is not a JSON number") from None
    except (ValueError, RecursionError):
        raise BadInput("body", "is not valid JSON") from None
    finally:
        del text
    if not isinstance(body, dict):
        raise BadInput("body", "must be a JSON object")
    if escaped and _has_lone_surrogate(body):
        raise BadInput("body", "holds a lone surrogate escape (\\udXXX); strings must be valid Unicode")
    return body


def username(value: Any, field: str = "username") -> str:
    """Return a valid participant name: a non-blank string of 1-128 characters."""
    if not isinstance(value, str):
        raise BadInput(field, "must be a string")
    if not value.strip():
        raise BadInput(field, "must not be empty")
    if len(value) > MAX_USERNAME:
        raise BadInput(field, f"must be at most {MAX_USERNAME} characters")
    if "\x00" in value:
        raise BadInput(field, "must not contain NUL characters")
    return value


def string(value: Any, field: str, *, max_length: int, allow_empty: bool = True) -> str:
    """Return `value` if it is a string of bounded length."""
    if not isinstance(value, str):
        raise BadInput(field, "must be a string")
    if not allow_empty and not value.strip():
        raise BadInput(field, "must not be empty")
    if len(value) > max_length:
        raise BadInput(field, f"must be at most {max_length} characters")
    return value


def integer(value: Any, field: str, *, low: int, high: int) -> int:
    """Return `value` if it is an integer (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(field, "must be an integer")
    if not low <= value <= high:
        raise BadInput(field, f"must be between {low} and {high}")
    return value


def one_of(value: Any, field: str, choices: Collection[str]) -> str:
    """Return `value` if it is one of `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise BadInput(field, f"must be one of {', '.join(choices)}")
    return value


def obj(value: Any, field: str) -> dict[str, Any]:
    """Return `value` if it is a JSON object."""
    if not isinstance(value, dict):
        raise BadInput(field, "must be an object")
    return value


def array(value: Any, field: str, *, max_items: int | None = None) -> list[Any]:
    """Return `value` if it is a JSON array of at most `max_items` items."""
    if not isinstance(value, list):
        raise BadInput(field, "must be an array")
    if max_items is not None and len(value) > max_items:
        raise BadInput(field, f"must have at most {max_items} items")
    return value


def storable(value: Any, field: str, depth: int = 0) -> Any:
    """Return opaque client JSON if MongoDB can store it as given: bounded depth, plain keys."""
    if depth > MAX_DEPTH:
        raise BadInput(field, f"is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$") or "." in key or "\x00" in key:
                raise BadInput(f"{field}.{key}", "keys may not start with '$' or contain '.' or NUL")
            storable(item, f"{field}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            storable(item, f"{field}[{index}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise BadInput(field, "must be a finite number")
    elif isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise BadInput(field, "is an integer too large to store (64-bit limit)")
    return value
