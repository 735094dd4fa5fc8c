"""JSON in and out of the API: request bodies read with jiter, answers written with orjson.

`read_body` takes the body's bytes from `core.request_body`, within the body memory budget,
and keeps the guarantees the server always gave: a body must be sent as
application/json, be strict UTF-8 (a leading BOM is allowed) and hold one JSON object;
NaN, Infinity, lone surrogate escapes and nesting deeper than the parser goes are refused
with 400 "body: ...". It reads with jiter (pydantic-core's parser, `from_json`), which
builds Python values straight from the bytes: integers exact at any size, and no copy of
the body's strings on the way, so a body of a hundred MB costs about its size once more,
where orjson holds twice that. jiter refuses all of the above itself; what it refuses
(and a BOM, or nesting deeper than its 200 levels) is read by the standard library,
which refuses it with the same message as ever, or reads what it always read.

`dumps` and `ApiJSON` (the app's `app.json`, behind every envelope) write UTF-8 rather
than \\u escapes, keep keys in the order given, write an ObjectId as its hex string and
every datetime in the API's one time format, `iso_utc`. A JSONText (JSON written already,
such as a stored sketch's data URI straight from its bytes) goes into an answer as it is.

`dumps_document` and `loads_document` are the other JSON the server writes: a stored
document as one line of MongoDB canonical extended JSON, every BSON type kept exactly
(ObjectIds, times, bytes), for the study export and the journal of generation records.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import orjson
from bson import ObjectId, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from flask import Response, request
from flask.json.provider import JSONProvider
from pydantic_core import from_json

from core.envelope import BadInput
from core.request_body import read_request_body

_BOM = b"\xef\xbb\xbf"
# JSON may escape lone UTF-16 surrogates ("\ud800"); Python keeps them, but no UTF-8 (so no
# BSON, log line or HTTP body) can hold them. Strictly decoded UTF-8 cannot carry one, so
# only a body with such an escape needs the walk over its strings.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def iso_utc(moment: datetime) -> str:
    """Return `moment` in the API's one time format, `2026-12-01T19:52:58.805Z` (naive times are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JSONText:
    """A value already written as JSON, in one or more pieces, which answers carry as they are.

    For orjson only: the standard library, which `dumps` falls back on, cannot write one.
    """

    __slots__ = ("pieces",)

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = pieces


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, ObjectId):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write(value: Any, default: Callable[[Any], Any], newline: bool) -> bytes:
    option = orjson.OPT_PASSTHROUGH_DATETIME | (orjson.OPT_APPEND_NEWLINE if newline else 0)
    try:
        return orjson.dumps(value, default=default, option=option)
    except orjson.JSONEncodeError:
        # What orjson cannot write (integers beyond 64 bits, keys that are no strings), the
        # standard library writes as Flask's own provider did; no stored value needs it.
        text = json.dumps(value, default=default, ensure_ascii=False, separators=(",", ":"))
        return (text + "\n" if newline else text).encode("utf-8")


def dumps(value: Any, *, newline: bool = False) -> bytes:
    """Return `value` as compact UTF-8 JSON, times and ObjectIds as the API writes them."""
    return _write(value, _default, newline)


def dumps_document(doc: dict[str, Any]) -> str:
    """Return one stored document as a line of canonical extended JSON (no newline), types kept exactly."""
    return json_util.dumps(doc, json_options=CANONICAL_JSON_OPTIONS, ensure_ascii=False)


def loads_document(line: str | bytes) -> dict[str, Any]:
    """Return the document of one line written by `dumps_document`."""
    return json_util.loads(line, json_options=CANONICAL_JSON_OPTIONS)


# Where a JSONText goes in orjson's output: it writes no NUL byte of its own (\u0000 in strings).
_SLOT = b"\x00"


def dumps_parts(value: Any, *, newline: bool = False) -> list[bytes]:
    """Return `value` as JSON, as `dumps` writes it, in parts: the pieces of each JSONText are parts of their own."""
    texts: list[tuple[bytes, ...]] = []

    def default(item: Any) -> Any:
        if isinstance(item, JSONText):
            texts.append(item.pieces)
            return orjson.Fragment(_SLOT)  # orjson calls this in the order it writes
        return _default(item)

    written = _write(value, default, newline)
    if not texts:
        return [written]
    pieces = written.split(_SLOT)
    parts = [pieces[0]]
    for text, piece in zip(texts, pieces[1:], strict=True):
        parts += (*text, piece)
    return parts


class ApiJSON(JSONProvider):
    """Flask's `app.json` on orjson, so that `jsonify` and every envelope write JSON as `dumps` does."""

    mimetype = "application/json"

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Return `obj` as JSON text."""
        return dumps(obj).decode("utf-8")

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Return the value of the JSON text `s`."""
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """Return a JSON response of the arguments, ending in a newline as Flask's own does."""
        # Parts, not one buffer: a /paint/start answer is a hundred MB of JSONText, sent as it is.
        parts = dumps_parts(self._prepare_response_obj(args, kwargs), newline=True)
        return self._app.response_class(parts, mimetype=self.mimetype)


def _raw_body() -> bytes:
    """Return the request body's bytes, read once (within the body memory budget) and not cached."""
    if not request.is_json:
        raise BadInput("body", "must be JSON, sent with Content-Type: application/json")
    return read_request_body()


def _read_fast(raw: bytes) -> Any:
    """Return the body read by jiter, or None when jiter refuses it (or it starts with a BOM)."""
    if raw.startswith(_BOM):
        return None  # jiter reads no BOM, and slicing it off would copy the body
    try:
        # Keys are few and repeat in every scheme, so jiter keeps one string of each.
        return from_json(raw, allow_inf_nan=False, cache_strings="keys")
    except ValueError:
        return None


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


def _read_by_stdlib(raw: bytes) -> dict[str, Any]:
    """Return the body read by the standard library, or raise BadInput with its reason."""
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


def read_body() -> dict[str, Any]:
    """Return the request's JSON object body, or raise BadInput.

    The raw bytes live only as long as this call, so the caller holds the reading alone.
    """
    raw = _raw_body()
    value = _read_fast(raw)
    if value is None:
        return _read_by_stdlib(raw)
    if not isinstance(value, dict):
        raise BadInput("body", "must be a JSON object")
    return value
