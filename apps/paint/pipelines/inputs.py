"""The `prompts` of each /generate type, checked into small immutable requests.

Every rule raises `BadInput` naming the field the way the client spells it
(`prompts.schemes[1].designImage`), so no bad input ever reaches a backend.
`describe()` gives the record's view of a request, with images still as `Image` objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core import validation as check
from core.envelope import BadInput
from core.image_store import Image, ImageDecodeError, decode_image

MAX_TASK = 500
MAX_TEXT = 200
MAX_TEXTS = 20
MAX_COUNT = 12  # num, selectNum, schemes, and group-two stimuli in all
MAX_SCHEME_ID = 100
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Sketch:
    """One sketch: the participant's text notes and, when sent, the drawing."""

    texts: tuple[str, ...]
    image: Image | None = None

    def notes(self) -> list[str]:
        """Return the non-blank notes, trimmed, for a prompt."""
        return [text.strip() for text in self.texts if text.strip()]


@dataclass(frozen=True)
class RapidInput:
    """Type 0: `num` ideas for a task."""

    task: str
    num: int

    def describe(self) -> dict[str, Any]:
        """Return the request in the client's field names, for the record."""
        return {"task": self.task, "num": self.num}


@dataclass(frozen=True)
class DeepInput:
    """Type 1: one sketch to diverge from, and the client's id of it."""

    task: str
    sketch: Sketch
    scheme_id: int | str

    def describe(self) -> dict[str, Any]:
        """Return the request in the client's field names, for the record."""
        return {"designTask": self.task, "designTexts": list(self.sketch.texts),
                "designImage": self.sketch.image, "schemeId": self.scheme_id}


@dataclass(frozen=True)
class NamingInput:
    """Type 2: sketches to name, and how many to select."""

    task: str
    select_num: int
    schemes: tuple[Sketch, ...]

    def describe(self) -> dict[str, Any]:
        """Return the request in the client's field names, for the record."""
        return {"designTask": self.task, "selectNum": self.select_num,
                "schemes": [{"designTexts": list(s.texts), "designImage": s.image} for s in self.schemes]}


@dataclass(frozen=True)
class GroupTwoInput:
    """Type 3: selected schemes (texts only) and stimuli per scheme."""

    schemes: tuple[Sketch, ...]
    num: int

    def describe(self) -> dict[str, Any]:
        """Return the request in the client's field names, for the record."""
        return {"selectedSchemes": [{"designTexts": list(s.texts)} for s in self.schemes], "num": self.num}


def _required(prompts: dict[str, Any], key: str, field: str) -> Any:
    if key not in prompts or prompts[key] is None:
        raise BadInput(field, "is required")
    return prompts[key]


def _task(prompts: dict[str, Any], key: str, *, allow_empty: bool) -> str:
    field = f"prompts.{key}"
    return check.string(_required(prompts, key, field), field, max_length=MAX_TASK, allow_empty=allow_empty)


def _count(prompts: dict[str, Any], key: str) -> int:
    field = f"prompts.{key}"
    return check.integer(_required(prompts, key, field), field, low=1, high=MAX_COUNT)


def _texts(scheme: dict[str, Any], field: str) -> tuple[str, ...]:
    field = f"{field}.designTexts"
    texts = check.array(_required(scheme, "designTexts", field), field, max_items=MAX_TEXTS)
    return tuple(check.string(text, f"{field}[{i}]", max_length=MAX_TEXT) for i, text in enumerate(texts))


def _image(scheme: dict[str, Any], field: str) -> Image:
    field = f"{field}.designImage"
    value = _required(scheme, "designImage", field)
    if not isinstance(value, str):
        raise BadInput(field, "must be a string: a data URI of a PNG, JPEG or WebP image")
    try:
        return decode_image(value)
    except ImageDecodeError as e:
        raise BadInput(field, str(e)) from None


def _schemes(prompts: dict[str, Any], key: str) -> list[dict[str, Any]]:
    field = f"prompts.{key}"
    schemes = check.array(_required(prompts, key, field), field, max_items=MAX_COUNT)
    if not schemes:
        raise BadInput(field, "must have at least one scheme")
    return [check.obj(scheme, f"{field}[{i}]") for i, scheme in enumerate(schemes)]


def _scheme_id(prompts: dict[str, Any]) -> int | str:
    value = _required(prompts, "schemeId", "prompts.schemeId")
    if isinstance(value, str):
        return check.string(value, "prompts.schemeId", max_length=MAX_SCHEME_ID)
    if isinstance(value, int) and not isinstance(value, bool):
        return check.integer(value, "prompts.schemeId", low=INT64[0], high=INT64[1])
    raise BadInput("prompts.schemeId", "must be an integer or a string")


def read_rapid(prompts: dict[str, Any]) -> RapidInput:
    """Check type 0 prompts: {task, num}."""
    return RapidInput(_task(prompts, "task", allow_empty=False), _count(prompts, "num"))


def read_deep(prompts: dict[str, Any]) -> DeepInput:
    """Check type 1 prompts: {designTask, designTexts, designImage, schemeId}."""
    task = _task(prompts, "designTask", allow_empty=True)
    sketch = Sketch(_texts(prompts, "prompts"), _image(prompts, "prompts"))
    return DeepInput(task, sketch, _scheme_id(prompts))


def read_naming(prompts: dict[str, Any]) -> NamingInput:
    """Check type 2 prompts: {designTask, selectNum, schemes: [{designTexts, designImage}]}."""
    task = _task(prompts, "designTask", allow_empty=True)
    select_num = _count(prompts, "selectNum")
    schemes = tuple(Sketch(_texts(s, f"prompts.schemes[{i}]"), _image(s, f"prompts.schemes[{i}]"))
                    for i, s in enumerate(_schemes(prompts, "schemes")))
    return NamingInput(task, select_num, schemes)


def read_group_two(prompts: dict[str, Any]) -> GroupTwoInput:
    """Check type 3 prompts: {selectedSchemes: [{designTexts}], num}."""
    schemes = tuple(Sketch(_texts(s, f"prompts.selectedSchemes[{i}]"))
                    for i, s in enumerate(_schemes(prompts, "selectedSchemes")))
    num = _count(prompts, "num")
    if len(schemes) * num > MAX_COUNT:
        raise BadInput("prompts.num", f"asks for {len(schemes) * num} stimuli ({len(schemes)} schemes "
                       f"x {num}); at most {MAX_COUNT} in all")
    return GroupTwoInput(schemes, num)


READERS = {0: read_rapid, 1: read_deep, 2: read_naming, 3: read_group_two}


def read_prompts(type_: int, prompts: Any) -> Any:
    """Return the checked request of `type_` for `prompts`, or raise BadInput."""
    if isinstance(type_, bool) or not isinstance(type_, int) or type_ not in READERS:
        raise BadInput("type", f"must be one of {', '.join(map(str, READERS))} for the sketching app")
    return READERS[type_](check.obj(prompts, "prompts"))
