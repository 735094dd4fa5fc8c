"""Values no schema would produce: wrong types, operators, huge and broken strings, broken JSON.

`mutations` damages one spot of a valid body; `raw_bodies` builds bytes that are not (or
not quite) JSON; `expected_json` tells what a strict parser makes of them, so a test can
say what the server should have answered.
"""
from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import strategies as st

from tests.schema_strategies import JSON_VALUES

OPERATORS = [{"$ne": ""}, {"$gt": ""}, {"$regex": ".*"}, {"$where": "sleep(1000)"}, {"$exists": True},
             {"$in": ["alice"]}, {"$ne": None}, {"$set": {"username": "x"}}]
# json.dumps writes the floats as NaN and Infinity, and the surrogates as \udXXX escapes.
EDGES = [None, True, False, 0, -1, 1.5, 6.0, 2**63, -(2**63) - 1, 10**30, float("nan"), float("inf"),
         float("-inf"), "", " ", "\t\n\u3000", "\x00", "\ud800", "a\udfffb", "$where", "a.b", [], {}, [[]],
         "null", "0", "💡" * 200, "x" * 129]
# Any character, lone surrogates included (hypothesis leaves those out unless asked), and often
# one of those that storage, keys or blank checks treat specially.
SPECIAL_CHARS = st.sampled_from(["\x00", "$", ".", " ", "\u3000", "\n", "\ud800", "\udfff"])
# (A list joined, not st.text: text() merges its alphabet into one range and the few specials vanish.)
ANY_TEXT = st.lists(st.characters(exclude_categories=()) | SPECIAL_CHARS, max_size=12).map("".join)
HUGE_SIZES = [10_000, 70_000, 1_100_000]  # beyond the fuzz app's limits for most routes, then /paint/save's
KEYS = ["$where", "$ne", "a.b", "\x00", "\ud800", "", "username", "__proto__", "未知"]


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"k": [value]}
    return value


def hostile_values() -> st.SearchStrategy[Any]:
    """Return a strategy of values that break types, limits and storage rules."""
    return st.one_of(
        st.sampled_from(OPERATORS), st.sampled_from(EDGES), JSON_VALUES, ANY_TEXT,
        st.sampled_from(HUGE_SIZES).map(lambda n: "x" * n),
        st.sampled_from([30, 60, 200]).map(_nested),
    )


def spots(value: Any, at: tuple = ()) -> list[tuple]:
    """Return the path of every value inside `value` (dict keys and list indices), `value` itself first."""
    found = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            found += spots(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += spots(item, (*at, index))
    return found


def mutate(body: Any, spot: tuple, action: str, value: Any, key: str) -> Any:
    """Return a copy of `body` with the value at `spot` replaced, dropped, or given a `key` (when an object)."""
    if not spot and action == "replace":
        return value
    changed = copy.deepcopy(body)
    if not spot:
        if action == "add" and isinstance(changed, dict):
            changed[key] = value
        return changed
    parent = changed
    for step in spot[:-1]:
        parent = parent[step]
    last = spot[-1]
    if action == "drop":
        del parent[last]
    elif action == "add" and isinstance(parent[last], dict):
        parent[last][key] = value
    else:
        parent[last] = value
    return changed


@st.composite
def mutations(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> Any:
    """Return a valid body with one spot damaged."""
    body = draw(valid)
    inner = spots(body)[1:]  # replacing the whole body is what the plain hostile values do
    spot = draw(st.sampled_from(inner or [()]))
    action = draw(st.sampled_from(["replace", "drop", "add"]))
    return mutate(body, spot, action, draw(hostile_values()), draw(st.sampled_from(KEYS) | ANY_TEXT))


# The sweep: each of these at every spot of every documented example body.
SWEEP_VALUES = [None, 6.0, 2**63, float("nan"), float("inf"), "\ud800", "a\udfffb", {"$ne": ""}, "x" * 70_000]
SWEEP_KEYS = ["$where.x\x00", "\ud800"]  # refused by opaque storage, ignored elsewhere; refused anywhere
SWEEP_QUERY = ["", " ", "\x00", "-1", "0", "+1", "1e3", "٥", "9" * 30, "true", "x" * 5000, "{\"$ne\": \"\"}",
               "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2024-02-30", "0" * 24, "f" * 64]
SWEEP_PATH = ["", " ", "0" * 23, "0" * 25, "g" * 24, "F" * 64, "..", "a/b", "%00", "\x00", "x" * 5000, "💡"]


def sweep(body: Any) -> list[Any]:
    """Return `body` damaged in every way of the sweep, one change at a time."""
    damaged = []
    for spot in spots(body)[1:]:
        damaged += [mutate(body, spot, "replace", value, "") for value in SWEEP_VALUES]
    for spot in spots(body):
        target = body
        for step in spot:
            target = target[step]
        if isinstance(target, dict):
            damaged += [mutate(body, spot, "add", 1, key) for key in SWEEP_KEYS]
    return damaged


BROKEN = [
    b"", b"null", b"[]", b'"alice"', b"{", b"}", b"\xff\xfe\x00", b"[" * 50_000 + b"]" * 50_000,
    b'{"username": NaN}', b'{"username": "a", "x": Infinity}', b'{"username": -Infinity}',
    b'{"username": "\\ud800"}', b'{"username": "a\\u0000"}', b'{"username": "\\\\ud800"}',
    b'{"username": "\xed\xa0\x80"}',  # a surrogate encoded as if UTF-8 could hold one
    b'\xef\xbb\xbf{"username": "bom"}', '{"username": "utf16"}'.encode("utf-16"),
    b'{"username": "alice", "username": {"$ne": ""}}', b'{"username": 1' + b"0" * 5000 + b"}",
]
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "text/plain",
                 "application/x-www-form-urlencoded", "application/vnd.api+json", "multipart/form-data"]


@st.composite
def raw_bodies(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> bytes:
    """Return bytes that are broken JSON, or valid JSON cut short, or noise."""
    text = json.dumps(draw(valid)).encode()
    cut = text[:draw(st.integers(0, max(0, len(text) - 1)))]
    return draw(st.sampled_from([cut, text.replace(b"0", b"NaN", 1)]) | st.sampled_from(BROKEN)
                | st.binary(max_size=64))


class _NotJSON(ValueError):
    """NaN and Infinity: Python parses them, JSON has not."""


def _refuse(name: str) -> None:
    raise _NotJSON(name)


def expected_json(raw: bytes, content_type: str) -> tuple[bool, Any]:
    """Return (parsed, value): whether a strict server reads `raw` sent as `content_type` as JSON."""
    mimetype = content_type.split(";")[0].strip().lower()
    if not (mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))):
        return False, None
    try:
        return True, json.loads(raw.decode("utf-8-sig"), parse_constant=_refuse)
    except (ValueError, RecursionError):  # UnicodeDecodeError included
        return False, None
