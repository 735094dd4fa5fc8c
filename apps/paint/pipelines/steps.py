"""The two kinds of pipeline step: ask GPT for a list of items, and draw one image.

Each step renders its template, calls the backend, records one trace entry per attempt
(failed ones included) and runs in `step_context`, which names the step on a backend
failure so the route can say which step failed. Step `rapid.products` renders the template
`rapid/products`; image steps are named like `rapid.scene_images[2]`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from agent.errors import GPTError, SDError, step_context
from agent.gpt import ChatAnswer, GPTClient
from agent.pool import SDInstancePool
from agent.sd import build_payload
from apps.paint.pipelines.errors import ShortAnswer
from apps.paint.pipelines.flow import Flow
from apps.paint.pipelines.parsing import split_items
from apps.paint.pipelines.prompts import PromptBook
from apps.paint.pipelines.sd_options import SDOptions
from apps.records import Trace
from core.image_store import Image

log = logging.getLogger(__name__)

ATTEMPTS = 2  # a short answer is asked again once


@dataclass
class Steps:
    """What the steps of one request share: templates, options, clients, trace and flow."""

    book: PromptBook
    sd_options: SDOptions
    gpt: GPTClient
    pool: SDInstancePool
    trace: Trace
    flow: Flow

    def ask(self, step: str, count: int, *, images: Sequence[Image] = (),
            keep: Callable[[list[str]], list[str]] | None = None, **variables: Any) -> list[str]:
        """Return `count` items answering template `step` (a vision call when `images` are given)."""
        template = step.replace(".", "/")
        prompt = self.book.render(template, count=count, **variables)
        got = 0
        with step_context(step):
            for attempt in range(1, ATTEMPTS + 1):
                self.flow.check()
                answer = self._call(step, template, prompt, images, attempt)
                items = split_items(answer.text)
                if keep is not None:
                    items = keep(items)
                got = len(items)
                short = None if got >= count else f"short answer: asked for {count} items, got {got}"
                self._trace_llm(step, template, prompt, images, attempt, answer=answer,
                                items=items[:count], error=short)
                if short is None:
                    return items[:count]
                log.warning("step %s: %s (attempt %d of %d)", step, short, attempt, ATTEMPTS)
            raise ShortAnswer(count, got)

    def draw(self, step: str, pipeline: str, kind: str, keywords: str) -> Image:
        """Return one image of `kind` ("scene" or "product") for GPT's `keywords`."""
        self.flow.check()
        keywords = " ".join(keywords.split())
        payload = build_payload(self.book.render(f"sd/{kind}_positive", keywords=keywords),
                                self.book.render(f"sd/{kind}_negative"),
                                self.sd_options[(pipeline, kind)])
        started = time.monotonic()
        try:
            with step_context(step):
                result = self.pool.txt2img(payload)
        except SDError as e:
            self.flow.fail(e)  # before the trace entry: other steps stop as early as possible
            self.trace.image(step=step, payload=payload, instance=e.job.instance,
                             info=None, latency=time.monotonic() - started, queue_wait=None,
                             attempts=e.job.attempts, errors=list(e.job.errors),
                             image=None, error=str(e))
            raise
        image = result.images[0]  # decoded and checked by the client: never empty
        self.trace.image(step=step, payload=payload, instance=result.instance, info=result.info,
                         latency=result.latency, queue_wait=result.queue_wait,
                         attempts=result.attempts, errors=list(result.errors), image=image, error=None)
        return image

    def draw_all(self, step: str, pipeline: str, kind: str, keywords: Sequence[str]) -> list[Future[Image]]:
        """Submit one image job per keyword line at once, so they spread over the instances."""
        return [self.flow.submit(self.draw, f"{step}[{i}]", pipeline, kind, line)
                for i, line in enumerate(keywords)]

    def _call(self, step: str, template: str, prompt: str, images: Sequence[Image],
              attempt: int) -> ChatAnswer:
        started = time.monotonic()
        try:
            if images:
                return self.gpt.vision(prompt, [image.data_uri() for image in images])
            return self.gpt.chat(prompt)
        except GPTError as e:
            self.flow.fail(e)  # before the trace entry: other steps stop as early as possible
            intended = self.gpt.vision_deployment if images else self.gpt.chat_deployment
            self._trace_llm(step, template, prompt, images, attempt, error=str(e),
                            deployment=e.deployment or intended,
                            latency=time.monotonic() - started, retries=e.retries)
            raise

    def _trace_llm(self, step: str, template: str, prompt: str, images: Sequence[Image], attempt: int,
                   *, answer: ChatAnswer | None = None, items: list[str] | None = None, error: str | None = None,
                   **failure: Any) -> None:
        fields = {"deployment": None, "latency": None, "retries": 0, **failure}
        if answer is not None:
            fields.update(deployment=answer.deployment, latency=answer.latency, retries=answer.retries)
        self.trace.llm(step=step, template=self.book.path(template), prompt=prompt,
                       images=[image.sha256 for image in images],
                       raw=answer.text if answer is not None else None, items=items,
                       attempt=attempt, error=error, **fields)
