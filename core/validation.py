"""Checks at the boundary: every value a client sends is checked here before it is used.

Requests are pydantic models on `Body`; `body(model)` reads the request's JSON (through
core.json_codec) and checks it, `parse_query` checks a query string, and either raises
`BadInput` naming the first wrong field the way every message of the API does. The types
several models share (a username, a not-blank text, opaque storable JSON) live here.
"""
from __future__ import annotations

import itertools
import math
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
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


# What a username may not hold, however it is written: controls (Cc), format characters such
# as zero-width spaces and direction overrides (Cf), line and paragraph separators (Zl, Zp),
# surrogates (Cs) and private-use characters (Co), whose look differs from device to device.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co"})
# ...and the other characters Unicode says to draw as nothing (Default_Ignorable_Code_Point
# outside Cf): the combining grapheme joiner, Hangul fillers, Khmer inherent vowels and the
# variation selectors. Unassigned code points are allowed: which they are depends on the
# Unicode version of the Python that runs the server.
INVISIBLE = frozenset(chr(code) for lo, hi in ((0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5),
                                                 (0x180B, 0x180F), (0x3164, 0x3164), (0xFE00, 0xFE0F),
                                                 (0xFFA0, 0xFFA0), (0xE0100, 0xE01EF))
                      for code in range(lo, hi + 1))


def refused_in_username(char: str) -> bool:
    """Return whether a username may not contain `char`: a control, format or invisible character."""
    return char in INVISIBLE or unicodedata.category(char) in REFUSED_CATEGORIES


def _username(value: str) -> str:
    """Return the name in its one spelling (NFC, no surrounding whitespace), or refuse it."""
    name = _not_blank(unicodedata.normalize("NFC", value).strip())
    for char in name:
        if refused_in_username(char):
            described = f"U+{ord(char):04X} {unicodedata.name(char, '')}".strip()
            raise PydanticCustomError("invisible", "must not contain control, invisible or direction "
                                      "characters ({char})", {"char": described})
    return name


def _char_class(chars: Callable[[str], bool]) -> str:
    """Return the characters for which `chars` holds as the inside of a regex class, as ranges."""
    ranges: list[list[int]] = []
    # Surrogates are left out: no body or query the server reads can hold one (they are refused
    # as text that is not Unicode), and regex engines that read Unicode scalar values, such as
    # the Rust one schemathesis checks with, refuse a pattern that names one.
    scalars = itertools.chain(range(0xD800), range(0xE000, sys.maxunicode + 1))
    for code in [ord(char) for char in map(chr, scalars) if chars(char)]:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])

    # \uXXXX in the BMP; astral characters as themselves, which ECMA-262 (with its u flag) and
    # Python's re both read as one code point.
    def write(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    return "".join(write(lo) if lo == hi else f"{write(lo)}-{write(hi)}" for lo, hi in ranges)


@lru_cache(maxsize=1)
def username_pattern() -> str:
    """Return the JSON Schema pattern of a username as the client may send it, whitespace around included."""
    space = _char_class(str.isspace)  # what str.strip() drops
    refused = _char_class(refused_in_username)
    visible, allowed = f"[^{space}{refused}]", f"[^{refused}]"
    return f"^[{space}]*{visible}({allowed}*{visible})?[{space}]*$"


def _username_schema(schema: dict[str, Any]) -> None:
    schema.update({
        "minLength": 1,
        "pattern": username_pattern(),
        "description": f"The participant's name: 1-{MAX_USERNAME} characters, not only whitespace. Whitespace "
                       "around it is dropped and the rest read in Unicode NFC, so 'alice ' is 'alice'; "
                       "control, format (zero-width, direction), line separator, private-use and other "
                       "invisible characters are refused.",
        "examples": ["alice"],
    })


# A participant's name, in one spelling: what differs only by surrounding whitespace or by
# Unicode normalisation is one name; what cannot be seen cannot be part of it.
Username = Annotated[str, Field(max_length=MAX_USERNAME, json_schema_extra=_username_schema),
                     AfterValidator(_username)]


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
