"""The sketching app (appid 0) behind /generate: one pipeline module per type, all in one table.

Each type's module declares its prompts, its answer and its step graph; `PIPELINES` is the
one place a type number means something. `steps` holds the two kinds of step (ask GPT for
items, draw an image) and the flow that runs a request's independent steps at once,
`settings` reads the templates and image options under settings/, `parsing` reads LLM
answers, and `contract` holds the shapes that every type shares.

`PaintApp` is built once at startup: loading it checks every prompt template and the
Stable Diffusion options under settings/, so a broken settings file stops the server
instead of a study.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.gpt import GPTClient
from agent.pool import ImageControl, SDInstancePool
from apps.attribution import Clues
from apps.paint.pipelines import contract, deep, group_two, naming, rapid
from apps.paint.pipelines.answers import Ask
from apps.paint.pipelines.contract import Answer
from apps.paint.pipelines.settings import PromptBook, load_sd_options
from apps.paint.pipelines.steps import Flow, Steps
from apps.records import Trace
from core.validation import Body, parse

log = logging.getLogger(__name__)

SETTINGS_DIR = Path(__file__).resolve().parents[3] / "settings"


@dataclass(frozen=True)
class Pipeline:
    """One /generate type: what it is sent, what it answers, and how it runs."""

    prompts: type[Body]
    answer: type[Answer]
    run: Callable[[Steps, Any], Answer]
    workers: Callable[[Any], int]  # tasks of one request that can run at once
    images: Callable[[Any], int]  # images one request draws
    asks: dict[str, Ask]  # its GPT steps: how each asks and what it accepts

    def size(self, prompts: Any) -> tuple[int, int]:
        """Return how many steps a request of these `prompts` takes (GPT steps and images), and how many images."""
        drawn = self.images(prompts)
        return len(self.asks) + drawn, drawn


PIPELINES: dict[int, Pipeline] = {
    0: Pipeline(rapid.RapidPrompts, rapid.RapidAnswer, rapid.run, rapid.workers, rapid.images, rapid.ASKS),
    1: Pipeline(deep.DeepPrompts, deep.DeepAnswer, deep.run, deep.workers, deep.images, deep.ASKS),
    2: Pipeline(naming.NamingPrompts, naming.NamingAnswer, naming.run, naming.workers, naming.images, naming.ASKS),
    3: Pipeline(group_two.GroupTwoPrompts, group_two.GroupTwoAnswer, group_two.run, group_two.workers,
                group_two.images, group_two.ASKS),
}
ASKS: dict[str, Ask] = {step: ask for pipeline in PIPELINES.values() for step, ask in pipeline.asks.items()}


class PaintApp:
    """The handler of appid APP_PAINT for POST /generate."""

    pipelines = PIPELINES

    def __init__(self, settings_dir: Path | None = None) -> None:
        self.settings_dir = Path(settings_dir) if settings_dir is not None else SETTINGS_DIR
        # Raises TemplateCheckError naming the template (a step's template must state what its checks read).
        self.book = PromptBook(self.settings_dir, asks={step.replace(".", "/"): ask for step, ask in ASKS.items()})
        self.sd_options = load_sd_options(self.settings_dir)  # raises SettingsError
        log.info("paint pipelines ready: %d templates checked in %s", len(self.book.specs), self.settings_dir)

    def read(self, type: int, prompts: Any) -> Body:
        """Return the `prompts` of a request of `type` checked by that type's model, or raise BadInput."""
        return parse(PIPELINES[type].prompts, prompts, "prompts")

    def size(self, type: int, prompts: Body) -> tuple[int, int]:
        """Return how many steps a request of `type` takes (GPT steps and images), and how many images."""
        return PIPELINES[type].size(prompts)

    def clues(self, prompts: Body) -> Clues:
        """Return what checked `prompts` show of their participant (apps.attribution)."""
        return contract.clues(prompts)

    def run(self, type: int, prompts: Body, gpt: GPTClient, pool: SDInstancePool, trace: Trace, *,
            sequential: bool = False, control: ImageControl | None = None) -> Answer:
        """Run the pipeline of `type` and return the answer's `data`; backend failures name their step.

        `control` holds the request's image jobs (whose they are; cancelling it stops them).
        `sequential=True` runs the same steps one after another (for the benchmark).
        """
        pipeline = PIPELINES[type]
        with Flow(pipeline.workers(prompts), sequential=sequential) as flow:
            steps = Steps(self.book, self.sd_options, gpt, pool, trace, flow, control)
            try:
                return pipeline.run(steps, prompts)
            except BaseException as error:
                flow.fail(error)  # first: the cause is this error, not the cancels it leads to
                if control is not None:  # its other images would be thrown away: free their instances now
                    control.cancel()
                raise
