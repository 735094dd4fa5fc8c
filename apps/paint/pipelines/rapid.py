"""Type 0, rapid divergence: `num` product ideas for a task, each a scene picture and a principle.

Step graph (GPT calls batch all products, so the chain is as short as per-product calls
with far fewer requests):
    products ─┬─ scenes ─ sd_prompts ─ scene_images[0..n)   (the request's thread)
              └─ abstracts                                   (a worker, meanwhile)
"""
from __future__ import annotations

from typing import Any

from apps.paint.pipelines import creatives
from apps.paint.pipelines.inputs import RapidInput
from apps.paint.pipelines.steps import Steps


def workers(request: RapidInput) -> int:
    """Return how many tasks of this request can run at once: abstracts and every image."""
    return 1 + request.num


def run(steps: Steps, request: RapidInput) -> dict[str, Any]:
    """Return the `data` of a type 0 answer."""
    n = request.num
    products = steps.ask("rapid.products", n, task=request.task)
    abstracts = steps.flow.submit(steps.ask, "rapid.abstracts", n, task=request.task, products=products)
    scenes = steps.ask("rapid.scenes", n, task=request.task, products=products)
    pairs = [{"product": p, "scene": s} for p, s in zip(products, scenes, strict=True)]
    keywords = steps.ask("rapid.sd_prompts", n, items=pairs)
    images = steps.flow.gather(steps.draw_all("rapid.scene_images", "rapid", "scene", keywords))
    result = [
        creatives.creative(creatives.RAPID_ABSTRACT, "sequence",
                           [creatives.abstract_image(image), creatives.abstract_text(text)])
        for image, text in zip(images, abstracts.result(), strict=True)
    ]
    return {"count": len(result), "result": result}
