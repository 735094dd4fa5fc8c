"""Type 3, convergence group two: per selected scheme `num` cards of scene, product shot and features.

Step graph (two chains of equal length; every image of the request is in flight at once):
    scenes    ─ scene_prompts   ─ scene_images[0..m)     (a worker)
    concretes ─ product_prompts ─ product_images[0..m)   (the request's thread)
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from apps.paint.pipelines import creatives
from apps.paint.pipelines.inputs import GroupTwoInput
from apps.paint.pipelines.steps import Steps


def workers(request: GroupTwoInput) -> int:
    """Return how many tasks of this request can run at once: the scene chain and every image."""
    return 1 + 2 * len(request.schemes) * request.num


def _scene_chain(steps: Steps, schemes: list[dict[str, Any]], per_scheme: int,
                 count: int) -> list[Future[str]]:
    scenes = steps.ask("group_two.scenes", count, schemes=schemes, per_scheme=per_scheme)
    keywords = steps.ask("group_two.scene_prompts", count, scenes=scenes)
    return steps.draw_all("group_two.scene_images", "group_two", "scene", keywords)


def run(steps: Steps, request: GroupTwoInput) -> dict[str, Any]:
    """Return the `data` of a type 3 answer."""
    schemes = [{"texts": sketch.notes()} for sketch in request.schemes]
    count = len(schemes) * request.num
    scene_chain = steps.flow.submit(_scene_chain, steps, schemes, request.num, count)
    concretes = steps.ask("group_two.concretes", count, schemes=schemes, per_scheme=request.num)
    keywords = steps.ask("group_two.product_prompts", count, features=concretes)
    products = steps.draw_all("group_two.product_images", "group_two", "product", keywords)
    pictures = steps.flow.gather(scene_chain.result() + products)
    scenes, shots = pictures[:count], pictures[count:]
    return {"result": [creatives.group_two(scene, shot, text)
                       for scene, shot, text in zip(scenes, shots, concretes, strict=True)]}
