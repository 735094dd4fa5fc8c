"""Type 2, convergence naming and selection: name every sketch, then pick the most promising.

Step graph: names (one vision call over every sketch) ─ select. The selection offers the
names as candidates; answers that name no scheme are dropped before counting, so a short
or wandering answer is asked again once and then fails as short.
"""
from __future__ import annotations

from typing import Any

from apps.paint.pipelines.inputs import NamingInput
from apps.paint.pipelines.parsing import match_choices
from apps.paint.pipelines.steps import Steps


def workers(request: NamingInput) -> int:
    """Return how many tasks of this request can run at once: none besides its own thread."""
    return 1


def run(steps: Steps, request: NamingInput) -> dict[str, Any]:
    """Return the `data` of a type 2 answer."""
    schemes = [{"texts": sketch.notes()} for sketch in request.schemes]
    images = [sketch.image for sketch in request.schemes if sketch.image is not None]
    names = steps.ask("naming.names", len(schemes), images=images, task=request.task, schemes=schemes)
    distinct = list(dict.fromkeys(names))
    named = [{"name": name, **scheme} for name, scheme in zip(names, schemes, strict=True)]
    selected = steps.ask("naming.select", min(request.select_num, len(distinct)),
                         keep=lambda items: match_choices(items, distinct),
                         task=request.task, schemes=named, names=distinct)
    return {"names": names, "selected": selected}
