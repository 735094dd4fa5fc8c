"""How a request's pipeline runs: the two kinds of step (ask GPT for items, draw an image) and the flow.

Each step renders its template, calls the backend, records one trace entry per attempt
(failed ones included) and runs in `step_context`, which names the step on a backend
failure so the route can say which step failed. Step `rapid.products` renders the template
`rapid/products`; image steps are named like `rapid.scene_images[2]`.

A GPT step (`Steps.ask`) is declared by its pipeline module's `ASKS` (answers.Ask): it asks
with the shape's schema (the GPT client decides the protocol per deployment), reads the items
(the parsed model, or `split_items` of the text) and runs the step's checks on them. An
answer cut at its token budget is asked again once with `BUDGET_GROWTH` times the budget; an
answer that fails a check is asked again once with a prompt that says what was wrong. A
second cut or a second failure raises `AnswerCut` or `CheckFailed` (502): never a wrong item.

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
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel

from agent.errors import BackendError, Cancelled, GPTError, SDError, step_context
from agent.gpt import REPHRASE, ChatAnswer, GPTClient
from agent.pool import ImageControl, SDInstancePool
from agent.sd import build_payload
from apps.paint.pipelines.answers import Ask, Context, Failure, answer_items, correction, summary
from apps.paint.pipelines.parsing import split_items
from apps.paint.pipelines.settings import PromptBook, SDOptions
from apps.records import Trace
from core.image_store import Image

log = logging.getLogger(__name__)

BUDGET_GROWTH = 2  # an answer cut at max_tokens is asked again once with this many times the budget
T = TypeVar("T")


class AnswerRejected(BackendError):
    """GPT answered, but not with what the step asked for, even when asked again.

    `kind` names why, as tests/corpus/README.md names failure kinds (`cut_off`, `count`, ...).
    """

    backend = "gpt"
    http_status = 502  # the upstream answered, but not with what was asked
    kind = "rejected"


class CheckFailed(AnswerRejected):
    """The items failed the step's checks, and again after the corrective retry."""

    def __init__(self, failures: Sequence[Failure]) -> None:
        super().__init__(f"GPT's answer failed its checks again after a corrective retry ({summary(failures)})"
                         + (f"; {REPHRASE}" if self.caused_by_input else ""))
        self.failures = list(failures)
        self.kind = failures[0].check  # the failure that names it (answers.PRECEDENCE)

    @classmethod
    def of(cls, failures: Sequence[Failure]) -> CheckFailed:
        """Return the error for the failures of the last attempt: a class of its own for a count or a refusal."""
        return {"count": ShortAnswer, "refusal": RefusedInText}.get(failures[0].check, cls)(failures)


class ShortAnswer(CheckFailed):
    """GPT gave fewer usable items than the step asked for (or, where items pair with inputs, more), twice."""


class RefusedInText(CheckFailed):
    """GPT's text refused the task, twice: like a refusal in `message.refusal`, the participant can rephrase."""

    http_status = 422
    caused_by_input = True


class AnswerCut(AnswerRejected):
    """The answer was cut at its token budget, and again with the larger one."""

    kind = "cut_off"

    def __init__(self, max_tokens: int | None) -> None:
        super().__init__(f"GPT's answer was cut at max_tokens={max_tokens} (finish_reason length), also after "
                         f"one retry with {BUDGET_GROWTH}x the budget; raise GPT_MAX_TOKENS")


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
    """What the steps of one request share: templates (with their steps' declarations), options, clients, trace and flow."""

    book: PromptBook
    sd_options: SDOptions
    gpt: GPTClient
    pool: SDInstancePool
    trace: Trace
    flow: Flow
    control: ImageControl | None = None  # whose images these are, for the pool's line; None: each its own

    def ask(self, step: str, count: int, *, images: Sequence[Image] = (),
            keep: Callable[[list[str]], list[str]] | None = None, **variables: Any) -> list[str]:
        """Return `count` checked items answering template `step` (a vision call when `images` are given).

        `keep` filters the items before they are checked (the selection keeps the candidates).
        """
        template = step.replace(".", "/")
        declared = self.book.asks[template]  # the pipeline module's ASKS, checked with its template
        call = _Call(step, template, self.book.render(template, count=count, **variables), images,
                     declared.shape.model(step.replace(".", "_"), count, variables))
        context = Context(count, self.book.limits[template], tuple(variables.get("products", ())))
        self._check()
        self.trace.begin(step)
        with step_context(step):
            return self._ask(call, declared, context, keep)

    def _check(self) -> None:
        """Raise Aborted if another step failed, Cancelled if the generation was cancelled: no step starts then."""
        self.flow.check()
        if self.control is not None and self.control.cancelled:
            raise Cancelled()

    def _ask(self, call: _Call, declared: Ask, context: Context,
             keep: Callable[[list[str]], list[str]] | None) -> list[str]:
        prompt, budget, reason, attempt = call.prompt, None, None, 0
        while True:
            attempt += 1
            self._check()
            started = time.monotonic()
            answer = self._call(call, prompt, attempt, budget, reason, started)
            if answer.finish_reason == "length":
                cut = f"cut at max_tokens={answer.max_tokens} (finish_reason length)"
                self._trace_llm(call, prompt, attempt, reason, started, answer=answer, error=cut)
                if budget is not None:  # the larger budget was cut too
                    raise AnswerCut(answer.max_tokens)
                log.warning("step %s: answer %s; asking again with %dx the budget", call.step, cut, BUDGET_GROWTH)
                budget, reason = (answer.max_tokens or self.gpt.max_tokens) * BUDGET_GROWTH, "budget"
                continue
            items, offered = self._items(answer, declared, context, keep)
            seen = replace(context, raw=answer.text if answer.parsed is None else "", offered=offered)
            usable, failures = declared.read(items, seen)
            said = summary(failures) or None
            self._trace_llm(call, prompt, attempt, reason, started, answer=answer, items=usable, error=said,
                            checks=declared.names, failed=[{"check": f.check, "detail": f.detail} for f in failures])
            if not failures:
                return usable
            if prompt != call.prompt:  # the corrective retry failed too
                raise CheckFailed.of(failures)
            log.warning("step %s: the answer failed its checks (%s); asking again with a correction",
                        call.step, said)
            prompt, reason = correction(call.prompt, failures), "correction"

    @staticmethod
    def _items(answer: ChatAnswer, declared: Ask, context: Context,
               keep: Callable[[list[str]], list[str]] | None) -> tuple[list[str], int | None]:
        """Return the items of an answer (the parsed model's, blank ones kept in place, else the text's) and,
        with `keep`, how many of them it would keep one by one (repeats counted, which `keep` merges)."""
        if answer.parsed is not None:
            items = answer_items(declared.shape, answer.parsed, names=declared.reads_names)
        else:
            # The request's product names may stand as labels before items, to be read off.
            items = split_items(answer.text, names=declared.reads_names, labels=context.names)
        if keep is None:
            return items, None
        return keep(items), sum(1 for item in items if keep([item]))

    def draw(self, step: str, pipeline: str, kind: str, keywords: str) -> Image:
        """Return one image of `kind` ("scene" or "product") for GPT's `keywords`."""
        self._check()
        self.trace.begin(step)
        keywords = " ".join(keywords.split())
        payload = build_payload(self.book.render(f"sd/{kind}_positive", keywords=keywords),
                                self.book.render(f"sd/{kind}_negative"),
                                self.sd_options[(pipeline, kind)])
        started = time.monotonic()
        try:
            with step_context(step):
                result = self.pool.txt2img(payload, control=self.control)
        except SDError as e:
            self.flow.fail(e)  # before the trace entry: other steps stop as early as possible
            self.trace.image(step=step, started=started, payload=payload, instance=e.job.instance,
                             info=None, latency=time.monotonic() - started, queue_wait=None,
                             attempts=e.job.attempts, errors=list(e.job.errors),
                             image=None, error=str(e))
            raise
        image = result.images[0]  # decoded and checked by the client: never empty
        self.trace.image(step=step, started=started, payload=payload, instance=result.instance, info=result.info,
                         latency=result.latency, queue_wait=result.queue_wait,
                         attempts=result.attempts, errors=list(result.errors), image=image, error=None)
        return image

    def draw_all(self, step: str, pipeline: str, kind: str, keywords: Sequence[str]) -> list[Future[Image]]:
        """Submit one image job per keyword line at once, so they spread over the instances."""
        return [self.flow.submit(self.draw, f"{step}[{i}]", pipeline, kind, line)
                for i, line in enumerate(keywords)]

    def _call(self, call: _Call, prompt: str, attempt: int, budget: int | None, reason: str | None,
              started: float) -> ChatAnswer:
        """Ask GPT once for the attempt that began at monotonic time `started`, tracing a failure."""
        try:
            if call.images:
                return self.gpt.vision(prompt, [image.data_uri() for image in call.images], schema=call.schema,
                                       max_tokens=budget)
            return self.gpt.chat(prompt, schema=call.schema, max_tokens=budget)
        except GPTError as e:
            self.flow.fail(e)  # before the trace entry: other steps stop as early as possible
            intended = self.gpt.vision_deployment if call.images else self.gpt.chat_deployment
            answer = getattr(e, "answer", None)  # what came back with a refusal or the content filter
            self._trace_llm(call, prompt, attempt, reason, started, answer=answer, error=str(e),
                            deployment=e.deployment or intended, latency=time.monotonic() - started,
                            retries=e.retries)
            raise

    def _trace_llm(self, call: _Call, prompt: str, attempt: int, reason: str | None, started: float, *,
                   answer: ChatAnswer | None = None, items: list[str] | None = None, error: str | None = None,
                   **more: Any) -> None:
        fields: dict[str, Any] = {"deployment": None, "latency": None, "retries": 0}
        if answer is not None:
            fields.update(deployment=answer.deployment, latency=answer.latency, retries=answer.retries,
                          raw=answer.text or answer.refusal, protocol=answer.protocol,
                          finish_reason=answer.finish_reason, max_tokens=answer.max_tokens, usage=answer.usage)
        fields.update(more)
        self.trace.llm(step=call.step, started=started, template=self.book.path(call.template), prompt=prompt,
                       images=[image.sha256 for image in call.images], items=items, attempt=attempt,
                       reason=reason, error=error, **fields)


@dataclass(frozen=True)
class _Call:
    """What every attempt of one GPT step sends: the step, its template, prompt, images and schema."""

    step: str
    template: str
    prompt: str
    images: Sequence[Image]
    schema: type[BaseModel]
