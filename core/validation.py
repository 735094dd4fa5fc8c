"""Checks at the boundary: every value a client sends is checked here before it is used.

Requests are pydantic models on `Body`; `body(model)` reads the request's JSON (through
core.json_codec) and checks it, `parse_query` checks a query string, and either raises
`BadInput` naming the first wrong field the way every message of the API does. The types
several models share (a username, a not-blank text, opaque storable JSON) live here.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, TypeVar

from bson import ObjectId
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, PydanticCustomError
from typing_extensions import TypeAliasType

from core.envelope import BadInput
from core.json_codec import read_body

MAX_USERNAME = 128
MAX_DEPTH = 40  # BSON nesting stops at 100; the client's schemes need about 5
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the integers MongoDB stores (64 bits)


M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    """A request body or query: strict JSON types, fields spelled as the client spells them.

    Strict, so `"6"`, `6.0` and `true` are no integers; frozen, so a checked request stays
    checked; unknown keys are ignored, as the client may send more than a route reads. Only
    the client's spelling is read (`designTask`, never `design_task`).
    """

    model_config = ConfigDict(strict=True, frozen=True, alias_generator=to_camel, validate_by_alias=True,
                              validate_by_name=False, extra="ignore")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
    return value


# Refuses a text that is empty or only whitespace.
NOT_BLANK = AfterValidator(_not_blank)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul", "must not contain NUL characters")
    return value


# A participant's name: 1-128 characters, not only whitespace, no NUL.
Username = Annotated[str, Field(max_length=MAX_USERNAME, json_schema_extra={
    "minLength": 1,
    # Not blank (Python's whitespace, as str.strip() sees it) and no NUL anywhere.
    "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$",
    "description": f"The participant's name: 1-{MAX_USERNAME} characters, not only whitespace, no NUL.",
    "examples": ["alice"],
}), NOT_BLANK, AfterValidator(_no_nul)]


def _query_int(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return int(value.strip())  # "20" and " 20 ", never "20.0" or "2e1"
    except ValueError:
        raise PydanticCustomError("int_parsing", "must be an integer") from None


# Reads an integer parameter of a query string, where every value arrives as text. Put it
# after the Field of bounds (`Annotated[int, Field(ge=1), FROM_QUERY]`) so the schema keeps them.
FROM_QUERY = BeforeValidator(_query_int)


def object_id(raw: str, what: str, field: str = "id") -> ObjectId:
    """Return the ObjectId a path or parameter writes as 24 hex characters, or raise BadInput naming `what`."""
    if not (isinstance(raw, str) and ObjectId.is_valid(raw)):
        raise BadInput(field, f"must be {what} id of 24 hex characters")
    return ObjectId(raw)


def field_name(loc: Sequence[int | str], prefix: str = "") -> str:
    """Return a pydantic error location the way messages name fields: `prompts.schemes[1].designImage`."""
    name = prefix
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name = f"{name}.{part}" if name else str(part)
    return name or "body"


def _problem(error: ErrorDetails) -> str:
    """Return what is wrong with a field, in the words of every other message of the API."""
    kind, ctx = error["type"], error.get("ctx") or {}
    problems = {
        "missing": "is required",
        "string_type": "must be a string",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "bool_type": "must be a boolean",
        "list_type": "must be an array",
        "dict_type": "must be an object",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "string_too_short": "must not be empty",
        "too_long": f"must have at most {ctx.get('max_length')} items",
        "too_short": f"must have at least {ctx.get('min_length')} item(s)",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "literal_error": f"must be one of {ctx.get('expected')}",
        "enum": f"must be one of {ctx.get('expected')}",
        "union_tag_invalid": f"must be one of {ctx.get('expected_tags')}",
    }
    if kind in problems:
        return problems[kind]
    if kind == "value_error":  # a plain ValueError in a validator: its own words
        return str(ctx.get("error", error["msg"]))
    return error["msg"]  # a PydanticCustomError: written for this API already


def _bad_input(error: ValidationError, prefix: str = "") -> BadInput:
    """Return the BadInput of a validation's first error; opaque JSON names the spot inside it."""
    first = error.errors(include_url=False)[0]
    inside = (first.get("ctx") or {}).get("inside", "")
    return BadInput(field_name(first["loc"], prefix) + inside, _problem(first))


def parse(model: type[M], value: Any, prefix: str = "") -> M:
    """Return `value` checked as `model`, or raise BadInput naming the first wrong field."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise _bad_input(error, prefix) from None


def parse_query(model: type[M], args: Mapping[str, str]) -> M:
    """Return the query string `args` checked as `model`; unknown parameters are refused.

    Query values are text: integer parameters carry `FROM_QUERY`, which reads them.
    """
    fields = {info.alias or name: name for name, info in model.model_fields.items()}
    unknown = sorted(set(args) - set(fields))
    if unknown:
        raise BadInput(unknown[0], f"is not a parameter; use {', '.join(fields)}")
    try:
        return model.model_validate(dict(args))
    except ValidationError as error:
        raise _bad_input(error) from None


def body(model: type[M]) -> M:
    """Return the request's JSON body checked as `model`, or raise BadInput."""
    return parse(model, read_body())


_TOO_DEEP = f"is nested deeper than {MAX_DEPTH} levels"
_BAD_KEY = "keys may not start with '$' or contain '.' or NUL"


def _unstorable(value: Any, depth: int) -> tuple[str, str] | None:
    """Return where inside `value` (`.key[2]`) MongoDB could not store it as given, and why; None if it can."""
    # Recursion stays shallow: a container at MAX_DEPTH with anything in it is refused.
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$") or "." in key or "\x00" in key:
                return f".{key}", _BAD_KEY
            if depth == MAX_DEPTH:
                return f".{key}", _TOO_DEEP
            if item is not None and not isinstance(item, str):  # most values: nothing to check
                found = _unstorable(item, depth + 1)
                if found is not None:
                    return f".{key}{found[0]}", found[1]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if depth == MAX_DEPTH:
                return f"[{index}]", _TOO_DEEP
            if item is not None and not isinstance(item, str):
                found = _unstorable(item, depth + 1)
                if found is not None:
                    return f"[{index}]{found[0]}", found[1]
    elif isinstance(value, float):
        if not math.isfinite(value):
            return "", "must be a finite number"
    elif isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return "", "is an integer too large to store (64-bit limit)"
    return None


def _storable(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "must be an object")
    found = _unstorable(value, 0)
    if found is not None:
        where, problem = found
        raise PydanticCustomError("unstorable", problem, {"inside": where})
    return value


# What _unstorable allows, as JSON Schema says it (the depth it cannot say, so the words do).
StorableKey = TypeAliasType("StorableKey", Annotated[str, Field(
    pattern="^([^$.\\u0000][^.\\u0000]*)?$",
    description="An object key MongoDB stores as given: it does not start with '$' and holds no '.' or NUL.")])
StorableValue = TypeAliasType("StorableValue", Annotated[
    None | bool | str | Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
    # A number that is no integer: an integer beyond 64 bits must not pass as a number.
    | Annotated[float, Field(json_schema_extra={"not": {"type": "integer"}})]
    | list["StorableValue"] | dict[StorableKey, "StorableValue"],
    Field(description=f"Any JSON value that MongoDB can store unchanged: object keys are StorableKeys, "
                      f"integers fit in 64 bits, nesting is at most {MAX_DEPTH} levels deep.")])

# Opaque client JSON that MongoDB stores as given: keys without '$', '.' or NUL, finite
# numbers, integers of 64 bits, at most MAX_DEPTH levels deep. Checked by one walk over it
# (not by StorableValue, which only describes it), whose errors name the spot inside.
StorableObject = Annotated[dict[str, Any], PlainValidator(_storable, json_schema_input_type=dict[StorableKey,
                                                                                               StorableValue])]
