"""Type 0, rapid divergence: `num` product ideas for a task, each a scene picture and a principle.

Step graph (GPT calls batch all products, so the chain is as short as per-product calls
with far fewer requests):
    products ─┬─ scenes ─ sd_prompts ─ scene_images[0..n)   (the request's thread)
              └─ abstracts                                   (a worker, meanwhile)
"""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from apps.paint.pipelines.answers import IDEAS, PRINCIPLES, SCENES, SD_PROMPTS
from apps.paint.pipelines.contract import Answer, Count, Creative, Task, abstract_image, abstract_text
from apps.paint.pipelines.steps import Steps
from core.validation import NOT_BLANK, Body

CARD_TYPE = 0  # rapid abstract
ASKS = {"rapid.products": IDEAS, "rapid.scenes": SCENES, "rapid.sd_prompts": SD_PROMPTS,
        "rapid.abstracts": PRINCIPLES}


class RapidPrompts(Body):
    """Type 0 prompts: a design task and how many ideas."""

    task: Annotated[Task, Field(description="The design task; not blank.", json_schema_extra={"pattern": "\\S"}),
                    NOT_BLANK]
    num: Annotated[Count, Field(description="How many product ideas (the client asks for 6).")]


class RapidAnswer(Answer):
    """Type 0 data: `count` cards of [abstractImage, abstractText]."""

    count: int
    result: list[Creative]


def images(prompts: RapidPrompts) -> int:
    """Return how many images this request draws: a scene per product."""
    return prompts.num


def workers(prompts: RapidPrompts) -> int:
    """Return how many tasks of this request can run at once: abstracts and every image."""
    return 1 + images(prompts)


def run(steps: Steps, prompts: RapidPrompts) -> RapidAnswer:
    """Return the `data` of a type 0 answer."""
    n = prompts.num
    products = steps.ask("rapid.products", n, task=prompts.task)
    abstracts = steps.flow.submit(steps.ask, "rapid.abstracts", n, task=prompts.task, products=products)
    scenes = steps.ask("rapid.scenes", n, task=prompts.task, products=products)
    pairs = [{"product": p, "scene": s} for p, s in zip(products, scenes, strict=True)]
    keywords = steps.ask("rapid.sd_prompts", n, items=pairs)
    images = steps.flow.gather(steps.draw_all("rapid.scene_images", "rapid", "scene", keywords))
    result = [Creative(type=CARD_TYPE, display_type="sequence", items=[abstract_image(image), abstract_text(text)])
              for image, text in zip(images, abstracts.result(), strict=True)]
    return RapidAnswer(count=len(result), result=result)
