"""What a generation showed and was shown, read from its record: the stimulus cards and the prompts.

A record keeps the answer's data as the client received it (`result`) and the checked
prompts (`input`), each image an ImageRef `{"sha256", "contentType"}` in place of its
base64. `cards_of` reads the cards in the order the participant saw them (a card's items,
a group's combinations nested in it); an answer made of name lists (type 2) is one card
of names, the selected ones marked. `inputs_of` reads the prompts as labelled texts and
images, whatever their shape.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from core.image_store import is_key


class CardItem(BaseModel):
    """One part of a stimulus card: a text or an image (by SHA-256), or a group of parts."""

    kind: str
    text: str | None = None
    image: str | None = None
    parts: list[CardItem] = []
    selected: bool = False


class Card(BaseModel):
    """One stimulus card as the participant saw it."""

    kind: int | None = None
    display: str | None = None
    items: list[CardItem]


class Input(BaseModel):
    """The prompts of a generation: labelled texts, and the images it was sent (by SHA-256)."""

    texts: list[tuple[str, str]]
    images: list[tuple[str, str]]


def image_key(value: Any) -> str | None:
    """Return the SHA-256 of an ImageRef as a record stores it, or None when `value` is none."""
    if isinstance(value, dict) and isinstance(value.get("sha256"), str) and is_key(value["sha256"]):
        return value["sha256"]
    return None


def _item(item: dict[str, Any]) -> CardItem:
    text = item.get("text")
    return CardItem(kind=str(item.get("type")), text=text if isinstance(text, str) else None,
                    image=image_key(item.get("image")),
                    parts=[_item(part) for part in item.get("combinations") or [] if isinstance(part, dict)])


def cards_of(result: dict[str, Any] | None) -> list[Card]:
    """Return the stimulus cards of an answer's data, in the order the participant saw them."""
    if not isinstance(result, dict):
        return []
    creatives = result.get("result")
    if isinstance(creatives, list):
        return [Card(kind=card.get("type"), display=card.get("displayType"),
                     items=[_item(item) for item in card.get("items") or [] if isinstance(item, dict)])
                for card in creatives if isinstance(card, dict)]
    names = result.get("names")
    if isinstance(names, list):
        selected = set(result.get("selected") or [])
        return [Card(display="names", items=[CardItem(kind="name", text=str(name), selected=name in selected)
                                             for name in names])]
    return []


def _walk(value: Any, label: str, found: Input) -> None:
    key = image_key(value)
    if key is not None:
        found.images.append((label, key))
    elif isinstance(value, dict):
        for name, inner in value.items():
            _walk(inner, f"{label}.{name}" if label else name, found)
    elif isinstance(value, list) and all(isinstance(inner, str) for inner in value):
        found.texts.append((label, "、".join(value)))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            _walk(inner, f"{label}[{index}]", found)
    elif value is not None:
        found.texts.append((label, str(value)))


def inputs_of(prompts: dict[str, Any] | None) -> Input:
    """Return the prompts of a record as labelled texts and images, in the order they were sent."""
    found = Input(texts=[], images=[])
    _walk(prompts or {}, "", found)
    return found
