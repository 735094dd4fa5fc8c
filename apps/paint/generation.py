"""The handler of appid APP_PAINT for POST /generate: four types of creative stimuli.

Built once at startup: loading it checks every prompt template and the Stable Diffusion
options under settings/, so a broken settings file stops the server instead of a study.
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.gpt import GPTClient
from agent.pool import SDInstancePool
from apps.paint.pipelines import deep, group_two, naming, rapid
from apps.paint.pipelines.flow import Flow
from apps.paint.pipelines.inputs import read_prompts
from apps.paint.pipelines.prompts import PromptBook
from apps.paint.pipelines.sd_options import load_sd_options
from apps.paint.pipelines.steps import Steps
from apps.trace import Trace

log = logging.getLogger(__name__)

SETTINGS_DIR = Path(__file__).resolve().parents[2] / "settings"
PIPELINES: dict[int, ModuleType] = {0: rapid, 1: deep, 2: naming, 3: group_two}


class PaintApp:
    """The handler of appid APP_PAINT for POST /generate."""

    types: frozenset[int] = frozenset(PIPELINES)

    def __init__(self, settings_dir: Path | None = None) -> None:
        self.settings_dir = Path(settings_dir) if settings_dir is not None else SETTINGS_DIR
        self.book = PromptBook(self.settings_dir)  # raises TemplateCheckError naming the template
        self.sd_options = load_sd_options(self.settings_dir)  # raises SettingsError
        log.info("paint pipelines ready: %d templates checked in %s", len(self.book.specs), self.settings_dir)

    def validate(self, type: int, prompts: Any) -> Any:
        """Return the checked request of `type` for `prompts`; raise BadInput naming the field."""
        return read_prompts(type, prompts)

    def describe(self, type: int, request: Any) -> dict[str, Any]:
        """Return the request in the client's field names, images as core.image_store.Image."""
        return request.describe()

    def run(self, type: int, request: Any, gpt: GPTClient, pool: SDInstancePool, trace: Trace, *,
            sequential: bool = False) -> dict[str, Any]:
        """Run the pipeline of `type` and return the response's `data`; backend failures name their step.

        `sequential=True` runs the same steps one after another (for the benchmark).
        """
        pipeline = PIPELINES[type]
        with Flow(pipeline.workers(request), sequential=sequential) as flow:
            steps = Steps(self.book, self.sd_options, gpt, pool, trace, flow)
            return pipeline.run(steps, request)
