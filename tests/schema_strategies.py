"""Hypothesis strategies for values that satisfy a JSON Schema (the subset our document uses).

Small and fast on purpose: it covers type, const, enum, anyOf/oneOf/allOf/not, the
number, string, array and object keywords and formats, and lets a final filter against
the real validator settle whatever a generator only approximates (oneOf exclusivity,
allOf rules). Schemas must be dereferenced first (tests.openapi_support.inline).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import timedelta, timezone
from typing import Any

from hypothesis import strategies as st

Strategy = st.SearchStrategy
MAX_ITEMS = 12  # longer arrays add time, not coverage: every limit we fuzz is at most this
SHORT_TEXT = 40

FINITE = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.none() | st.booleans() | st.integers() | FINITE | st.text(max_size=SHORT_TEXT)
# Any JSON value: what a schema without constraints accepts.
JSON_VALUES: Strategy = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)

OFFSETS = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda minutes: timezone(timedelta(minutes=minutes)))
FORMATS: dict[str, Strategy] = {"date-time": st.datetimes(timezones=OFFSETS).map(lambda t: t.isoformat())}


class SchemaStrategies:
    """Build strategies from schemas, with extra string formats (format name -> strategy)."""

    def __init__(self, formats: Mapping[str, Strategy] | None = None) -> None:
        self.formats = {**FORMATS, **(formats or {})}

    def values(self, schema: Any, check: Callable[[Any], bool] | None = None) -> Strategy:
        """Return a strategy of values of `schema`, kept only when `check` (the validator) agrees."""
        strategy = self._any(schema)
        return strategy.filter(check) if check else strategy

    def _any(self, schema: Any) -> Strategy:
        if schema is True or schema == {}:
            return JSON_VALUES
        if schema is False or schema.get("not") == {}:
            return st.nothing()
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema:
                base = {k: v for k, v in schema.items() if k != combinator}
                return st.one_of([self._any(self._merge(base, part)) for part in schema[combinator]])
        if "allOf" in schema:
            base = {k: v for k, v in schema.items() if k != "allOf"}
            typed = [part for part in schema["allOf"] if "type" in part or "anyOf" in part]
            # Generate from the part that says what the value is; the caller's check applies the rest.
            return self._any(self._merge(base, typed[0]) if typed and "type" not in base else base)
        if "not" in schema:
            unwanted = schema["not"]
            return self._typed({k: v for k, v in schema.items() if k != "not"}).filter(
                lambda value: not _matches_type(unwanted, value))
        return self._typed(schema)

    @staticmethod
    def _merge(base: dict[str, Any], part: Any) -> Any:
        if not isinstance(part, dict) or not base:
            return part
        merged = {**base, **part}
        if "properties" in base and "properties" in part:
            merged["properties"] = {**base["properties"], **part["properties"]}
        return merged

    def _typed(self, schema: dict[str, Any]) -> Strategy:
        types = schema.get("type")
        if types is None:
            return JSON_VALUES
        if isinstance(types, list):
            return st.one_of([self._typed({**schema, "type": one}) for one in types])
        build = {"null": lambda s: st.none(), "boolean": lambda s: st.booleans(), "integer": self._integer,
                 "number": self._number, "string": self._string, "array": self._array, "object": self._object}
        return build[types](schema)

    @staticmethod
    def _integer(schema: dict[str, Any]) -> Strategy:
        return st.integers(schema.get("minimum"), schema.get("maximum"))

    def _number(self, schema: dict[str, Any]) -> Strategy:
        low, high = schema.get("minimum"), schema.get("maximum")
        return self._integer(schema) | st.floats(low, high, allow_nan=False, allow_infinity=False)

    def _string(self, schema: dict[str, Any]) -> Strategy:
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if "format" in schema and schema["format"] in self.formats:
            return self.formats[schema["format"]]
        if "pattern" in schema:
            pattern = re.compile(schema["pattern"])
            fits = st.from_regex(pattern).filter(lambda s: low <= len(s) <= (high or len(s)))
            if high is None:
                return fits
            longest = st.text(min_size=high, max_size=high).filter(lambda s: pattern.search(s) is not None)
            return fits | longest
        short = st.text(min_size=low, max_size=max(low, min(high if high is not None else SHORT_TEXT, SHORT_TEXT)))
        return (short | st.text(min_size=high, max_size=high)) if high is not None else short

    def _array(self, schema: dict[str, Any]) -> Strategy:
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", MAX_ITEMS), MAX_ITEMS)
        items = self._any(schema.get("items", {}))
        if items.is_empty:  # recursion was cut here: only the empty array is left
            return st.just([]) if low == 0 else st.nothing()
        return st.lists(items, min_size=low, max_size=max(low, high))

    def _object(self, schema: dict[str, Any]) -> Strategy:
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        declared = st.fixed_dictionaries(
            {name: self._any(sub) for name, sub in properties.items() if name in required},
            optional={name: self._any(sub) for name, sub in properties.items() if name not in required})
        extra = schema.get("additionalProperties", True)
        if extra is False:
            return declared
        values = JSON_VALUES if extra is True else self._any(extra)
        if values.is_empty:
            return declared
        names = schema.get("propertyNames", {}).get("pattern")
        keys = st.from_regex(names) if names else st.text(max_size=12)
        extras = st.dictionaries(keys.filter(lambda key: key not in properties), values, max_size=3)
        return st.builds(lambda more, known: {**more, **known}, extras, declared)


def _matches_type(schema: Any, value: Any) -> bool:
    """Return whether `value` has the one type `schema` names (only `{"type": ...}` is supported)."""
    kinds = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
             "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
             "string": lambda v: isinstance(v, str), "null": lambda v: v is None}
    return kinds[schema["type"]](value)
