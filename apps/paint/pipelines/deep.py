"""Type 1, deep divergence: name the sketched product, then 3 related products as stimuli.

Step graph:
    identify (vision) ─ products ─┬─ scenes ─ sd_prompts ─ scene_images[0..3)
                                  ├─ abstracts
                                  └─ concretes
"""
from __future__ import annotations

from typing import Any

from apps.paint.pipelines import creatives
from apps.paint.pipelines.inputs import DeepInput
from apps.paint.pipelines.steps import Steps

RELATED = 3  # related products per sketch (the contract's count)


def workers(request: DeepInput) -> int:
    """Return how many tasks of this request can run at once: two texts and every image."""
    return 2 + RELATED


def run(steps: Steps, request: DeepInput) -> dict[str, Any]:
    """Return the `data` of a type 1 answer."""
    task, notes = request.task, request.sketch.notes()
    image = request.sketch.image
    sketch = steps.ask("deep.identify", 1, images=[image] if image else [], task=task, texts=notes)[0]
    products = steps.ask("deep.products", RELATED, task=task, sketch=sketch, texts=notes)
    abstracts = steps.flow.submit(steps.ask, "deep.abstracts", RELATED, task=task, products=products)
    concretes = steps.flow.submit(steps.ask, "deep.concretes", RELATED, task=task, products=products)
    scenes = steps.ask("deep.scenes", RELATED, task=task, products=products)
    pairs = [{"product": p, "scene": s} for p, s in zip(products, scenes, strict=True)]
    keywords = steps.ask("deep.sd_prompts", RELATED, items=pairs)
    pictures = steps.flow.gather(steps.draw_all("deep.scene_images", "deep", "scene", keywords))
    result = [
        creatives.creative(creatives.DEEP, "sequence", [
            creatives.abstract_image(picture), creatives.abstract_text(abstract),
            creatives.concrete_text(concrete)])
        for picture, abstract, concrete in zip(pictures, abstracts.result(), concretes.result(), strict=True)
    ]
    return {"schemeId": request.scheme_id, "count": len(result), "result": result}
