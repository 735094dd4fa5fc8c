"""Request bodies in memory: one budget for what the bodies of all requests hold at once.

A JSON body costs about twice its size while it is read: its bytes, then the values jiter
builds from them (`PARSE_FACTOR`). Before a body is read that much is reserved from the
app's `BODY_MEMORY_BUDGET` (by Content-Length; a body without one, chunked, as its pieces
arrive), and it is given back when the request ends. When the budget is spent the request
is answered 503 in the envelope with Retry-After and its body is not read: the budget is
shared by every client, so the server is busy, not this client over its own allowance (which
is what 429 says, as /generate's rate limit does). A body that could never fit, twice its
size above the whole budget, is 413.

Under gunicorn the worker (`core.worker`) reads bodies on its event loop and reserves for
them there, through the same `BodyMemoryBudget.admit`; the app then finds the body read
already, a `ReadBody` as `wsgi.input`, and takes its bytes without reading anything. Such a
request reaches the app only once its body is in, so `arrival` gives its place in the order
requests arrived in as it was when its head came (`arrive`, which the worker calls then).
"""
from __future__ import annotations

import ctypes
import io
import logging
import math
import threading
import time

from flask import Flask, current_app, g, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from core.envelope import ApiError

log = logging.getLogger(__name__)

EXTENSION = "body_memory"
PARSE_FACTOR = 2  # the body's bytes, then jiter's values, about as large again
RETRY_AFTER = 2  # seconds: about what reading and storing a large save takes
PIECE = 1024 * 1024  # a body without Content-Length is read, and reserved for, this much at a time
_HELD = "body_memory_held"  # what the current request reserved, in flask.g
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_last_arrival = 0  # the number `arrive` gave last, under its lock (the worker's loop and threads ask)
_arrival_lock = threading.Lock()


class BodyMemoryFull(ApiError):
    """The bodies being read hold the whole budget; the client should send again shortly."""

    status = 503

    def __init__(self) -> None:
        super().__init__(f"the server is busy reading other large requests; send this again in {RETRY_AFTER} s")
        self.headers["Retry-After"] = str(RETRY_AFTER)


class BodyMemoryBudget:
    """Bytes that request bodies may hold at once, reserved before they are read and released after."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Return the bytes reserved now."""
        return self._used

    def fits(self, size: int) -> bool:
        """Return whether a body of `size` bytes could ever be held."""
        return PARSE_FACTOR * size <= self.limit

    def reserve(self, nbytes: int) -> bool:
        """Reserve `nbytes` if they fit in what is left; return whether they did."""
        with self._lock:
            if self._used + nbytes > self.limit:
                return False
            self._used += nbytes
            return True

    def admit(self, size: int) -> int:
        """Reserve what `size` bytes of body cost and return it; raise 413 if they never fit, else 503 if not now."""
        if not self.fits(size):
            raise RequestEntityTooLarge()
        cost = PARSE_FACTOR * size
        if not self.reserve(cost):
            raise BodyMemoryFull()
        return cost

    def release(self, nbytes: int) -> None:
        """Give back `nbytes` reserved before."""
        with self._lock:
            self._used -= nbytes


class ReadBody:
    """A request body the server read before the app ran, with the memory reserved for it.

    gunicorn's worker gives it to the app as `wsgi.input`. When the worker could not read the
    body (no memory left, too large), it holds the error the app answers instead.
    """

    def __init__(self, budget: BodyMemoryBudget, pieces: list[bytes], reserved: int, arrival: int) -> None:
        self._budget = budget
        self._pieces: list[bytes] | None = pieces
        self._stream: io.BytesIO | None = None
        self.reserved = reserved
        self.arrival = arrival  # `arrive()` when the request's head came in
        self.error: Exception | None = None

    @classmethod
    def refused(cls, budget: BodyMemoryBudget, error: Exception, reserved: int, arrival: int) -> ReadBody:
        """Return a body left unread because of `error`, which the app raises when it asks for it."""
        body = cls(budget, [], reserved, arrival)
        body.error = error
        return body

    def take(self) -> bytes:
        """Return the whole body and forget it, so the caller holds its only reference."""
        if self.error is not None:
            raise self.error
        pieces, self._pieces = self._pieces, None
        return b"".join(pieces or ())

    def _opened(self) -> io.BytesIO:
        if self._stream is None:
            self._stream = io.BytesIO(b"" if self.error is not None else self.take())
        return self._stream

    # The rest of a WSGI input stream, for readers other than `read_request_body`.
    def read(self, size: int | None = -1) -> bytes:
        """Return up to `size` bytes of the body (all that is left by default)."""
        return self._opened().read(size)

    def readline(self, size: int | None = -1) -> bytes:
        """Return the body's next line."""
        return self._opened().readline(size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        """Return the body's remaining lines."""
        return self._opened().readlines(hint)

    def __iter__(self):
        return iter(self._opened())

    def release(self) -> None:
        """Give back the memory reserved for this body (the request has ended)."""
        reserved, self.reserved = self.reserved, 0
        self._budget.release(reserved)


def arrive() -> int:
    """Return when a request arrives: nanoseconds of the wall clock, above every number this process gave before.

    The wall clock and not a counter, so that the numbers of a deployment's processes compare
    (a participant's next save may reach another worker, or another host, as far as their
    clocks agree: run NTP), and a restarted server's come after those of its last run.
    """
    global _last_arrival
    with _arrival_lock:
        _last_arrival = max(_last_arrival + 1, time.time_ns())
        return _last_arrival


def arrival() -> int:
    """Return the current request's place in the order requests arrive in: when its head came in."""
    stream = request.environ.get("wsgi.input")
    return stream.arrival if isinstance(stream, ReadBody) else arrive()


def _hold(cost: int) -> None:
    setattr(g, _HELD, g.get(_HELD, 0) + cost)


def _release(_error: BaseException | None = None) -> None:
    held = g.pop(_HELD, 0)
    if held:
        current_app.extensions[EXTENSION].release(held)


def _read_unsized(budget: BodyMemoryBudget) -> bytes:
    pieces, size = [], 0
    # werkzeug's stream: the input up to its end when the server marks one, 413 beyond the limit.
    while piece := request.stream.read(PIECE):
        size += len(piece)
        if not budget.fits(size):
            raise RequestEntityTooLarge()
        _hold(budget.admit(len(piece)))
        pieces.append(piece)
    return b"".join(pieces)


def read_request_body() -> bytes:
    """Return the current request's body once its memory is reserved; raise 413 or 503 instead.

    The bytes come exactly as the server gives them: Content-Length bytes straight from
    `wsgi.input`, as WSGI allows (werkzeug's own reads would copy a large body once or twice
    more), or the body gunicorn's worker read already.
    """
    size, limit = request.content_length, request.max_content_length
    if size is not None and limit is not None and size > limit:
        raise RequestEntityTooLarge()
    stream = request.environ["wsgi.input"]
    if isinstance(stream, ReadBody):
        raw = stream.take()
        if limit is not None and len(raw) > limit:  # chunked: the worker only knew the largest limit
            raise RequestEntityTooLarge()
        return raw
    budget: BodyMemoryBudget = current_app.extensions[EXTENSION]
    if size is None:
        return _read_unsized(budget)
    _hold(budget.admit(size))
    raw = stream.read(size)
    if len(raw) < size:
        raise ClientDisconnected()
    return raw


def return_freed_bodies() -> bool:
    """Make glibc's malloc give every block of 128 KiB or more back to the system when it is freed.

    Otherwise a freed body stays in the arena of the thread that read it (glibc raises its
    mmap threshold to the largest block freed), so the resident size grows to the sum of
    every thread's largest body, not what the budget lets them hold at once: 20 parallel
    512 MB saves left the worker at 5.7 GB. Return whether the C library took the setting.
    """
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024))
    except (OSError, AttributeError):  # not glibc (musl, macOS): its own allocator's habits apply
        return False


def largest_body(config) -> int:
    """Return the largest body any route accepts: the save's limit, or every route's if larger."""
    return max(config["MAX_CONTENT_LENGTH"], config["SAVE_MAX_CONTENT_LENGTH"])


def init_app(app: Flask) -> None:
    """Give `app` its body memory budget, released by every request as it ends."""
    if app.config["BODY_MEMORY_BUDGET"] <= 0:
        raise ValueError("BODY_MEMORY_BUDGET must be a positive number of bytes")
    budget = BodyMemoryBudget(app.config["BODY_MEMORY_BUDGET"])
    app.extensions[EXTENSION] = budget
    app.teardown_request(_release)
    if not budget.fits(app.config["SAVE_MAX_CONTENT_LENGTH"]):
        log.warning("BODY_MEMORY_BUDGET (%d MB) holds no save of up to SAVE_MAX_CONTENT_LENGTH: saves over "
                    "%d MB will be refused with 413", app.config["BODY_MEMORY_BUDGET"] // 2**20,
                    math.floor(budget.limit / PARSE_FACTOR / 2**20))
