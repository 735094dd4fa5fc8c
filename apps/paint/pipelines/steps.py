"""How a request's pipeline runs: the two kinds of step (ask GPT for items, draw an image) and the flow.

Each step renders its template, calls the backend, records one trace entry per attempt
(failed ones included) and runs in `step_context`, which names the step on a backend
failure so the route can say which step failed. Step `rapid.products` renders the template
`rapid/products`; image steps are named like `rapid.scene_images[2]`.

The `Flow` runs a request's independent steps at the same time on a private thread pool
that stops at the first failure. Only the request's own thread waits on futures; tasks
never wait on each other, so the bounded pool cannot deadlock however it is sized. Once a
step fails, steps that have not started yet are skipped (`Aborted`), the ones in flight
finish (so their trace entries are complete and no backend work is left running), and the
first failure is raised. With `sequential=True` every task runs inline when submitted: the
same steps one after another, which the benchmark compares against.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from agent.errors import BackendError, GPTError, SDError, step_context
from agent.gpt import ChatAnswer, GPTClient
from agent.pool import SDInstancePool
from agent.sd import build_payload
from apps.paint.pipelines.parsing import split_items
from apps.paint.pipelines.settings import PromptBook, SDOptions
from apps.records import Trace
from core.image_store import Image

log = logging.getLogger(__name__)

ATTEMPTS = 2  # a short answer is asked again once
T = TypeVar("T")


class ShortAnswer(BackendError):
    """GPT gave fewer usable items than a step asked for, twice."""

    backend = "gpt"
    http_status = 502  # the upstream answered, but not with what was asked

    def __init__(self, asked: int, got: int) -> None:
        super().__init__(f"GPT answer came back short after one retry: asked for {asked} items, "
                         f"got {got}")
        self.asked = asked
        self.got = got


class Aborted(Exception):
    """Another step of the same request failed, so this one does not start."""


class Flow:
    """Run a request's independent steps at the same time; use it as a context manager."""

    def __init__(self, workers: int, *, sequential: bool = False) -> None:
        self._executor = None if sequential else ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="paint-step")
        self._lock = threading.Lock()
        self._failed = threading.Event()
        self._first: BaseException | None = None

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Start `fn(*args, **kwargs)` on a worker (inline when sequential) and return its future."""
        if self._executor is not None:
            return self._executor.submit(self._guarded, fn, *args, **kwargs)
        future: Future[T] = Future()
        try:
            future.set_result(self._guarded(fn, *args, **kwargs))
        except Exception as e:
            future.set_exception(e)
        return future

    def gather(self, futures: Sequence[Future[T]]) -> list[T]:
        """Return the futures' results in order; raise as soon as one of them fails."""
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future in done and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        return [future.result() for future in futures]

    def check(self) -> None:
        """Raise Aborted if a step of this request has already failed."""
        if self._failed.is_set():
            raise Aborted("an earlier step of this request failed")

    def fail(self, error: BaseException) -> None:
        """Note `error` as the request's failure unless an earlier one is already noted."""
        if isinstance(error, Aborted):
            return
        with self._lock:
            if self._first is None:
                self._first = error
        self._failed.set()

    def _guarded(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.check()
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self.fail(e)
            raise

    def __enter__(self) -> Flow:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if error is not None:
            self.fail(error)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=error is not None)
        first = self._first
        if error is not None and first is not None and first is not error:
            # Raise the cause, not a step that stopped because of it.
            raise first.with_traceback(first.__traceback__) from None


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
