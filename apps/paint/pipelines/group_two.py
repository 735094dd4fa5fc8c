"""Type 3, convergence group two: per selected scheme `num` cards of scene, product shot and features.

Step graph (two chains of equal length; every image of the request is in flight at once):
    scenes    ─ scene_prompts   ─ scene_images[0..m)     (a worker)
    concretes ─ product_prompts ─ product_images[0..m)   (the request's thread)
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from apps.paint.pipelines.answers import FEATURES, LABEL, SCENES, SD_PROMPTS, TOO_LONG, TOO_SHORT, Ask, PerScheme
from apps.paint.pipelines.contract import (
    MAX_COUNT, Answer, Count, Creative, Item, Notes, abstract_image, concrete_image, concrete_text,
)
from apps.paint.pipelines.steps import Steps
from core.image_store import Image
from core.validation import Body

CARD_TYPE = 4  # convergence group two
ASKS = {  # scenes and features come as one list per scheme, so no scheme's items can slide into another's
    "group_two.scenes": Ask(PerScheme("一个使用场景，一句话"), SCENES.checks),
    "group_two.scene_prompts": SD_PROMPTS,
    "group_two.concretes": Ask(PerScheme("一段功能特征描述"), (TOO_LONG, TOO_SHORT, FEATURES, LABEL)),
    "group_two.product_prompts": SD_PROMPTS,
}


class GroupTwoPrompts(Body):
    """Type 3 prompts: the selected schemes (notes only) and stimuli per scheme."""

    selected_schemes: Annotated[list[Notes], Field(min_length=1, max_length=MAX_COUNT)]
    num: Annotated[Count, Field(description="Stimuli per scheme (the client sends 3 for one scheme, 2 for "
                                            f"two, 1 for more); at most {MAX_COUNT} in all.")]

    @field_validator("num")
    @classmethod
    def _at_most_in_all(cls, num: int, info: ValidationInfo) -> int:
        schemes = len(info.data.get("selected_schemes") or ())
        if schemes * num > MAX_COUNT:
            raise PydanticCustomError("too_many", "asks for {total} stimuli ({schemes} schemes x {num}); at most "
                                      "{most} in all", {"total": schemes * num, "schemes": schemes, "num": num,
                                                        "most": MAX_COUNT})
        return num


class GroupTwoAnswer(Answer):
    """Type 3 data: cards of one groupTypeTwo item combining scene, product shot and features."""

    result: list[Creative]


def images(prompts: GroupTwoPrompts) -> int:
    """Return how many images this request draws: a scene and a product shot per stimulus."""
    return 2 * len(prompts.selected_schemes) * prompts.num


def workers(prompts: GroupTwoPrompts) -> int:
    """Return how many tasks of this request can run at once: the scene chain and every image."""
    return 1 + images(prompts)


def _scene_chain(steps: Steps, schemes: list[dict[str, Any]], per_scheme: int,
                 count: int) -> list[Future[Image]]:
    scenes = steps.ask("group_two.scenes", count, schemes=schemes, per_scheme=per_scheme)
    keywords = steps.ask("group_two.scene_prompts", count, scenes=scenes)
    return steps.draw_all("group_two.scene_images", "group_two", "scene", keywords)


def _card(scene: Image, product: Image, features: str) -> Creative:
    combined = Item(type="groupTypeTwo",
                    combinations=[abstract_image(scene), concrete_image(product), concrete_text(features)])
    return Creative(type=CARD_TYPE, display_type="direct", items=[combined])


def run(steps: Steps, prompts: GroupTwoPrompts) -> GroupTwoAnswer:
    """Return the `data` of a type 3 answer."""
    schemes = [{"texts": scheme.notes()} for scheme in prompts.selected_schemes]
    count = len(schemes) * prompts.num
    scene_chain = steps.flow.submit(_scene_chain, steps, schemes, prompts.num, count)
    concretes = steps.ask("group_two.concretes", count, schemes=schemes, per_scheme=prompts.num)
    keywords = steps.ask("group_two.product_prompts", count, features=concretes)
    products = steps.draw_all("group_two.product_images", "group_two", "product", keywords)
    pictures = steps.flow.gather(scene_chain.result() + products)
    scenes, shots = pictures[:count], pictures[count:]
    return GroupTwoAnswer(result=[_card(scene, shot, text) for scene, shot, text in zip(scenes, shots, concretes,
                                                                                        strict=True)])
