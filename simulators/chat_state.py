"""Counters, request records and fault switches of the chat simulator (a test double).

Everything here is guarded by one condition variable, so tests may flip switches from any
thread while handler threads read them. `simulators.openai_chat.ChatSimulator` builds on it.
"""
from __future__ import annotations

import threading

from simulators.chat_messages import ChatRecord


class ChatState:
    """What the simulator has seen, and how it should misbehave next."""

    def __init__(self, latency: float = 0.0, hang_timeout: float = 30.0) -> None:
        self.latency = latency
        self.messy = False
        self.hang_timeout = hang_timeout
        self.requests: list[ChatRecord] = []
        self.calls = 0  # every POST, valid or not
        self.in_flight = 0
        self.peak_in_flight = 0
        self.held = 0
        self._lock = threading.Condition()
        self._fail: tuple[int, int, float | None] = (0, 0, None)  # (count, status, retry_after)
        self._short = 0
        self._hang = 0
        self._releases = 0
        self._stopping = threading.Event()

    def fail_next(self, n: int, status: int = 429, retry_after: float | None = None) -> None:
        """Answer the next `n` valid calls with `status` (and Retry-After headers when given)."""
        with self._lock:
            self._fail = (n, status, retry_after)

    def short_next(self, n: int) -> None:
        """Answer the next `n` valid calls with one item fewer than asked (1 asked: empty)."""
        with self._lock:
            self._short = n

    def hang_next(self, n: int) -> None:
        """Hold the next `n` valid calls until `release()`, `hang_timeout` or `stop()`."""
        with self._lock:
            self._hang = n

    def release(self, n: int | None = None) -> None:
        """Let `n` held calls go on (None: all held calls, and cancel pending hangs)."""
        with self._lock:
            if n is None:
                self._hang = 0
            # Never more releases than held calls, so none is left over for a later hang.
            self._releases = min(self._releases + (self.held if n is None else n), self.held)
            self._lock.notify_all()

    def _wake_all(self) -> None:
        """Mark the simulator as stopping and let every held or sleeping call go."""
        self._stopping.set()
        with self._lock:
            self._hang = 0
            self._lock.notify_all()

    # The handler threads call the methods below.
    def _begin(self) -> None:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _end(self, record: ChatRecord | None) -> None:
        with self._lock:
            self.in_flight -= 1
            if record is not None:
                self.requests.append(record)

    def _take_fault(self) -> tuple[int, float | None] | None:
        """Consume one `fail_next` credit: return (status, retry_after), or None."""
        with self._lock:
            count, status, retry_after = self._fail
            if count <= 0:
                return None
            self._fail = (count - 1, status, retry_after)
            return status, retry_after

    def _take_answer_style(self) -> tuple[bool, bool]:
        """Return (short, messy) for this answer, consuming one `short_next` credit."""
        with self._lock:
            short = self._short > 0
            if short:
                self._short -= 1
            return short, self.messy

    def _hold_if_asked(self) -> None:
        """Block while this call is held by `hang_next`."""
        with self._lock:
            if self._hang <= 0:
                return
            self._hang -= 1
            self.held += 1
            try:
                self._lock.wait_for(lambda: self._releases > 0 or self._stopping.is_set(),
                                    timeout=self.hang_timeout)
                if self._releases > 0:
                    self._releases -= 1
            finally:
                self.held -= 1

    def _wait_latency(self) -> None:
        if self.latency > 0:
            self._stopping.wait(self.latency)  # stop() cuts the wait short
