"""Type 2, convergence naming and selection: name every sketch, then pick the most promising.

Step graph: names (one vision call over every sketch) ─ select. The selection offers the
names as candidates; answers that name no scheme are dropped before counting, so a short
or wandering answer is asked again once and then fails as short.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from apps.paint.pipelines.answers import NAMES, Ask, Choices
from apps.paint.pipelines.contract import MAX_COUNT, Answer, Count, Sketch, Task
from apps.paint.pipelines.parsing import match_choices
from apps.paint.pipelines.steps import Steps
from core.validation import Body


# The selection is an enum of the names (structured outputs), or the names it matches (text).
ASKS = {"naming.names": NAMES, "naming.select": Ask(Choices("一个选中的方案名称，与候选完全一致"), (),
                                                                 reads_names=True)}


class NamingPrompts(Body):
    """Type 2 prompts: sketches to name, and how many to select."""

    design_task: Task
    select_num: Annotated[Count, Field(description="How many schemes to select (never more than there are).")]
    schemes: Annotated[list[Sketch], Field(min_length=1, max_length=MAX_COUNT)]


class NamingAnswer(Answer):
    """Type 2 data: one name per scheme, in order, and the names selected."""

    names: list[str]
    selected: list[str]


def images(prompts: NamingPrompts) -> int:
    """Return how many images this request draws: none, it names and selects."""
    return 0


def workers(prompts: NamingPrompts) -> int:
    """Return how many tasks of this request can run at once: none besides its own thread."""
    return 1


def run(steps: Steps, prompts: NamingPrompts) -> NamingAnswer:
    """Return the `data` of a type 2 answer."""
    schemes = [{"texts": sketch.notes()} for sketch in prompts.schemes]
    images = [sketch.design_image for sketch in prompts.schemes]
    names = steps.ask("naming.names", len(schemes), images=images, task=prompts.design_task, schemes=schemes)
    distinct = list(dict.fromkeys(names))
    named = [{"name": name, **scheme} for name, scheme in zip(names, schemes, strict=True)]
    selected = steps.ask("naming.select", min(prompts.select_num, len(distinct)),
                         keep=lambda items: match_choices(items, distinct),
                         task=prompts.design_task, schemes=named, names=distinct)
    return NamingAnswer(names=names, selected=selected)
