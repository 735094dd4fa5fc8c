"""The stimulus cards the client shows: creatives made of items, in the contract's exact shape."""
from __future__ import annotations

from typing import Any

# Creative types of the contract.
RAPID_ABSTRACT = 0
DEEP = 2
GROUP_TWO = 4


def item(kind: str, *, text: str | None = None, image: str | None = None,
         combinations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Return one item; every item carries all four keys."""
    return {"type": kind, "text": text, "image": image, "combinations": combinations}


def creative(creative_type: int, display: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Return one creative (stimulus card)."""
    return {"type": creative_type, "displayType": display, "items": items}


def abstract_image(image: str) -> dict[str, Any]:
    """Return an abstractImage item (a scene picture, raw base64)."""
    return item("abstractImage", image=image)


def abstract_text(text: str) -> dict[str, Any]:
    """Return an abstractText item (a working principle)."""
    return item("abstractText", text=text)


def concrete_image(image: str) -> dict[str, Any]:
    """Return a concreteImage item (a product shot, raw base64)."""
    return item("concreteImage", image=image)


def concrete_text(text: str) -> dict[str, Any]:
    """Return a concreteText item (a feature description)."""
    return item("concreteText", text=text)


def group_two(scene: str, product: str, features: str) -> dict[str, Any]:
    """Return a convergence group-two creative: scene, product shot and features together."""
    combined = item("groupTypeTwo", combinations=[abstract_image(scene), concrete_image(product),
                                                  concrete_text(features)])
    return creative(GROUP_TWO, "direct", [combined])
