"""What the sketching app's /generate exchanges with the client, as ../shared/API-CONTRACT.md spells it.

The parts every type's prompts share (a task, a sketch's notes and drawing, a count), and
the stimulus cards every answer is made of. Each pipeline module declares its own prompts
and answer from these; validation, the OpenAPI document and the generation record all come
from those models. Images stay `core.image_store.Image` values from the request's decoding
to the answer, where they become raw base64 (or, in a record, references to the store).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from apps.attribution import Clues, notes_key, task_key
from core.image_store import AnswerImage, Image, SketchImage
from core.validation import INT64_MAX, INT64_MIN, Body

MAX_TASK = 500
MAX_TEXT = 200
MAX_TEXTS = 20
MAX_COUNT = 12  # num, selectNum, schemes, and group-two stimuli in all
MAX_SCHEME_ID = 100

Task = Annotated[str, Field(max_length=MAX_TASK, description="The design task; may be empty.")]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Texts = Annotated[list[Annotated[str, Field(max_length=MAX_TEXT)]],
                  Field(max_length=MAX_TEXTS, description="The sketch's text notes.")]


def _scheme_id(value: object) -> int | str:
    if isinstance(value, str):
        if len(value) > MAX_SCHEME_ID:
            raise PydanticCustomError("scheme_id_length", "must be at most {max} characters", {"max": MAX_SCHEME_ID})
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT64_MIN <= value <= INT64_MAX:
            raise PydanticCustomError("int64", "must be a 64-bit integer")
        return value
    raise PydanticCustomError("scheme_id", "must be an integer or a string")


# The client's own id of a sketch, echoed in the answer exactly as sent.
SchemeId = Annotated[int | str, PlainValidator(
    _scheme_id,
    json_schema_input_type=Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)] | Annotated[
        str, Field(max_length=MAX_SCHEME_ID)]),
    Field(description="The client's id of the sketch, echoed in the answer.")]


class Notes(Body):
    """A sketch's text notes (type 3 sends no drawing)."""

    design_texts: Texts

    def notes(self) -> list[str]:
        """Return the non-blank notes, trimmed, for a prompt."""
        return [text.strip() for text in self.design_texts if text.strip()]


class Sketch(Notes):
    """A sketch: its notes and the drawing."""

    design_image: SketchImage


TASK_FIELDS = ("task", "design_task")  # the prompts fields that hold the design task


def _parts(value: object) -> Iterator[object]:
    """Yield `value` and every model, list item and field value inside it."""
    yield value
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _parts(getattr(value, name))
    elif isinstance(value, list):
        for item in value:
            yield from _parts(item)


def clues(prompts: BaseModel) -> Clues:
    """Return what `prompts` show of their participant: the sketch images, each sketch's notes, the task."""
    parts = list(_parts(prompts))
    texts = (notes_key(part.design_texts) for part in parts if isinstance(part, Notes))
    task = next((getattr(prompts, name) for name in TASK_FIELDS if name in type(prompts).model_fields), None)
    return Clues(sketches=[part.sha256 for part in parts if isinstance(part, Image)],
                 texts=[key for key in texts if key], task=task_key(task))


class Answer(BaseModel):
    """An answer's `data`, or a part of it: built by the server, dumped in the client's spelling."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True, extra="forbid")


ItemKind = Literal["abstractText", "concreteText", "abstractImage", "concreteImage", "groupTypeOne", "groupTypeTwo"]


class Item(Answer):
    """One part of a card; every item carries all four keys."""

    type: ItemKind
    text: str | None = None
    image: AnswerImage | None = None
    combinations: list[Item] | None = None


class Creative(Answer):
    """One stimulus card. Types: 0 rapid abstract, 1 rapid concrete, 2 deep, 3 and 4 convergence groups."""

    type: int
    display_type: Literal["sequence", "direct"]
    items: list[Item]


def abstract_image(image: AnswerImage) -> Item:
    """Return an abstractImage item (a scene picture)."""
    return Item(type="abstractImage", image=image)


def abstract_text(text: str) -> Item:
    """Return an abstractText item (a working principle)."""
    return Item(type="abstractText", text=text)


def concrete_image(image: AnswerImage) -> Item:
    """Return a concreteImage item (a product shot)."""
    return Item(type="concreteImage", image=image)


def concrete_text(text: str) -> Item:
    """Return a concreteText item (a feature description)."""
    return Item(type="concreteText", text=text)
