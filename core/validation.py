"""Checks at the boundary: every value a client sends is checked here before it is used.

Each helper returns the value when it is right and raises `BadInput` naming the field
when it is not, so views read as a list of rules. Request bodies are read by
core.json_codec; `body(model)` reads one and checks it as a pydantic model.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, PydanticCustomError

from bson import ObjectId

from core.envelope import BadInput
from core.json_codec import INT64_LIMIT, InexactNumber, read_body

MAX_USERNAME = 128
MAX_DEPTH = 40  # BSON nesting stops at 100; the client's schemes need about 5
# The validation context key that says whether large floats are as the client sent them
# (json_codec.read_body's `exact`); values not read from a body are.
EXACT_NUMBERS = "exact_numbers"


M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    """A request body or query: strict JSON types, fields spelled as the client spells them.

    Strict, so `"6"`, `6.0` and `true` are no integers; frozen, so a checked request stays
    checked; unknown keys are ignored, as the client may send more than a route reads. Only
    the client's spelling is read (`designTask`, never `design_task`).
    """

    model_config = ConfigDict(strict=True, frozen=True, alias_generator=to_camel, validate_by_alias=True,
                              validate_by_name=False, extra="ignore")


def _username(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
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
}), AfterValidator(_username)]


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


def parse(model: type[M], value: Any, prefix: str = "", *, exact: bool = True) -> M:
    """Return `value` checked as `model`, or raise BadInput naming the first wrong field.

    `exact` False: `value` was read by orjson, and a number that may have lost its exact
    value raises json_codec.InexactNumber.
    """
    try:
        return model.model_validate(value, context={EXACT_NUMBERS: exact})
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
    return read_body(lambda value, exact: parse(model, value, exact=exact))


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


_TOO_DEEP = f"is nested deeper than {MAX_DEPTH} levels"
_BAD_KEY = "keys may not start with '$' or contain '.' or NUL"


def _unstorable(value: Any, depth: int, exact: bool) -> tuple[str, str] | None:
    """Return where inside `value` (`.key[2]`) MongoDB could not store it as given, and why; None if it can."""
    # Recursion stays shallow: a container at MAX_DEPTH with anything in it is refused.
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$") or "." in key or "\x00" in key:
                return f".{key}", _BAD_KEY
            if depth == MAX_DEPTH:
                return f".{key}", _TOO_DEEP
            if item is not None and not isinstance(item, str):  # most values: nothing to check
                found = _unstorable(item, depth + 1, exact)
                if found is not None:
                    return f".{key}{found[0]}", found[1]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if depth == MAX_DEPTH:
                return f"[{index}]", _TOO_DEEP
            if item is not None and not isinstance(item, str):
                found = _unstorable(item, depth + 1, exact)
                if found is not None:
                    return f"[{index}]{found[0]}", found[1]
    elif isinstance(value, float):
        if not math.isfinite(value):
            return "", "must be a finite number"
        if not exact and abs(value) >= INT64_LIMIT:
            raise InexactNumber  # perhaps an integer too large to store: json_codec reads it again exactly
    elif isinstance(value, int) and not -INT64_LIMIT <= value < INT64_LIMIT:
        return "", "is an integer too large to store (64-bit limit)"
    return None


def _storable(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    found = _unstorable(value, 0, (info.context or {}).get(EXACT_NUMBERS, True))
    if found is not None:
        where, problem = found
        raise PydanticCustomError("unstorable", problem, {"inside": where})
    return value


# Opaque client JSON that MongoDB stores as given: keys without '$', '.' or NUL, finite
# numbers, integers of 64 bits, at most MAX_DEPTH levels deep. Errors name the spot inside.
StorableObject = Annotated[dict[str, Any], AfterValidator(_storable)]
