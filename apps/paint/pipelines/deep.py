"""Type 1, deep divergence: name the sketched product, then 3 related products as stimuli.

Step graph:
    identify (vision) ─ products ─┬─ scenes ─ sd_prompts ─ scene_images[0..3)
                                  ├─ abstracts
                                  └─ concretes
"""
from __future__ import annotations

from apps.paint.pipelines.answers import (
    FEATURES_OF_PRODUCTS, IDEAS, IDENTIFIED, LABEL, PRINCIPLES, SCENES, SD_PROMPTS, SENTENCE, TOO_LONG, Ask, Named,
)
from apps.paint.pipelines.contract import (
    Answer, Creative, SchemeId, Sketch, Task, abstract_image, abstract_text, concrete_text,
)
from apps.paint.pipelines.steps import Steps

RELATED = 3  # related products per sketch (the contract's count)
CARD_TYPE = 2  # deep
ASKS = {
    # A sketch that cannot be told is an answer of its own (null), never a sentence in the name.
    # Lines after the name explain it: the first is the answer (more_ok).
    "deep.identify": Ask(Named("草图所画产品的名称；实在无法判断时为 null"), (IDENTIFIED, TOO_LONG, SENTENCE, LABEL),
                         more_ok=True, reads_names=True),
    "deep.products": IDEAS, "deep.scenes": SCENES, "deep.sd_prompts": SD_PROMPTS, "deep.abstracts": PRINCIPLES,
    "deep.concretes": FEATURES_OF_PRODUCTS,
}


class DeepPrompts(Sketch):
    """Type 1 prompts: one sketch to diverge from, and the client's id of it."""

    design_task: Task
    scheme_id: SchemeId


class DeepAnswer(Answer):
    """Type 1 data: the echoed schemeId and 3 cards of [abstractImage, abstractText, concreteText]."""

    scheme_id: int | str
    count: int
    result: list[Creative]


def images(prompts: DeepPrompts) -> int:
    """Return how many images this request draws: a scene per related product."""
    return RELATED


def workers(prompts: DeepPrompts) -> int:
    """Return how many tasks of this request can run at once: two texts and every image."""
    return 2 + images(prompts)


def run(steps: Steps, prompts: DeepPrompts) -> DeepAnswer:
    """Return the `data` of a type 1 answer."""
    task, notes = prompts.design_task, prompts.notes()
    sketch = steps.ask("deep.identify", 1, images=[prompts.design_image], task=task, texts=notes)[0]
    products = steps.ask("deep.products", RELATED, task=task, sketch=sketch, texts=notes)
    abstracts = steps.flow.submit(steps.ask, "deep.abstracts", RELATED, task=task, products=products)
    concretes = steps.flow.submit(steps.ask, "deep.concretes", RELATED, task=task, products=products)
    scenes = steps.ask("deep.scenes", RELATED, task=task, products=products)
    pairs = [{"product": p, "scene": s} for p, s in zip(products, scenes, strict=True)]
    keywords = steps.ask("deep.sd_prompts", RELATED, items=pairs)
    pictures = steps.flow.gather(steps.draw_all("deep.scene_images", "deep", "scene", keywords))
    result = [
        Creative(type=CARD_TYPE, display_type="sequence",
                 items=[abstract_image(picture), abstract_text(abstract), concrete_text(concrete)])
        for picture, abstract, concrete in zip(pictures, abstracts.result(), concretes.result(), strict=True)
    ]
    return DeepAnswer(scheme_id=prompts.scheme_id, count=len(result), result=result)
