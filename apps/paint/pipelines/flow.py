"""The concurrent steps of one request: a private thread pool that stops at the first failure.

Only the request's own thread waits on futures; tasks never wait on each other, so the
bounded pool cannot deadlock however it is sized. Once a step fails, steps that have not
started yet are skipped (`Aborted`), the ones in flight finish (so their trace entries
are complete and no backend work is left running), and the first failure is raised.
With `sequential=True` every task runs inline when submitted: the same steps one after
another, which the benchmark compares against.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any, TypeVar

from apps.paint.pipelines.errors import Aborted

T = TypeVar("T")


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
