"""JSON in and out of the API: request bodies read with orjson.

`read_body` and `json_object` keep the guarantees the server always gave: a body must be
sent as application/json, be strict UTF-8 (a leading BOM is allowed) and hold one JSON
object; NaN, Infinity, lone surrogate escapes and nesting deeper than the parser goes
are refused with 400 "body: ...". orjson refuses all of those itself, and what it reads
the standard library reads to the same values, but for one thing: orjson reads an
integer beyond 64 bits as a float. So a body orjson refuses is read once more by the
standard library, which refuses it with the same message as ever (or reads what it
always read, such as 1e400, for the checks to refuse); and a check that meets a float
large enough to have been such an integer asks for that exact reading too.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from flask import request

from core.envelope import BadInput

T = TypeVar("T")

_BOM = b"\xef\xbb\xbf"
# Integers of magnitude 2**63 and more do not fit MongoDB's 64 bits, and orjson reads those
# below -2**63 or from 2**64 on as floats: a float this large may have been sent as one.
INT64_LIMIT = 2**63
# JSON may escape lone UTF-16 surrogates ("\ud800"); Python keeps them, but no UTF-8 (so no
# BSON, log line or HTTP body) can hold them. Strictly decoded UTF-8 cannot carry one, so
# only a body with such an escape needs the walk over its strings.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class InexactNumber(Exception):
    """A check met a float so large that orjson may have read it from an integer literal.

    Not a ValueError, so that it passes through pydantic's validators to `read_body`.
    """


def _raw_body() -> bytes | bytearray:
    """Return the request body's bytes, read once and not cached by the request."""
    if not request.is_json:
        raise BadInput("body", "must be JSON, sent with Content-Type: application/json")
    stream = request.stream  # answers 413 here when Content-Length is over the limit
    size = request.content_length
    if size is None:
        return request.get_data(cache=False)  # chunked: the stream stops at the limit
    # Read into one buffer of the announced size: get_data would copy the body once more.
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        count = stream.readinto(view[filled:])
        if not count:
            break
        filled += count
    view.release()
    del buffer[filled:]
    return buffer


def _read_fast(raw: bytes | bytearray) -> dict[str, Any] | None:
    """Return the body read by orjson, or None when orjson refuses it."""
    view = memoryview(raw)[len(_BOM):] if raw.startswith(_BOM) else raw
    try:
        value = orjson.loads(view)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        raise BadInput("body", "must be a JSON object")
    return value


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


def _read_exactly(raw: bytes | bytearray) -> dict[str, Any]:
    """Return the body read by the standard library (integers exact), or raise BadInput."""
    try:
        # Strict UTF-8 (RFC 8259), unlike json.loads on bytes, which lets encoded surrogates pass.
        text = str(raw, "utf-8-sig")
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


def read_body(check: Callable[[dict[str, Any], bool], T]) -> T:
    """Return `check(body, exact)` of the request's JSON object body, or raise BadInput.

    `exact` is False for orjson's reading, in which integers beyond 64 bits are floats: a
    check that meets a float of magnitude INT64_LIMIT or more raises InexactNumber and is
    called once more with the standard library's reading, `exact` True. The raw bytes live
    only as long as this call, so the caller holds the checked value alone.
    """
    raw = _raw_body()
    fast = _read_fast(raw)
    if fast is not None:
        try:
            return check(fast, False)
        except InexactNumber:
            pass
        del fast  # never hold two readings of a large body
    return check(_read_exactly(raw), True)


def _has_large_float(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if abs(item) >= INT64_LIMIT:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _exact_values(body: dict[str, Any], exact: bool) -> dict[str, Any]:
    if not exact and _has_large_float(body):
        raise InexactNumber
    return body


def json_object() -> dict[str, Any]:
    """Return the request body as a JSON object, its values as the standard library reads them.

    Walks the whole body for large floats: a model read with `validation.body` checks its
    numbers where it checks its values, and spares large bodies that second walk.
    """
    return read_body(_exact_values)
