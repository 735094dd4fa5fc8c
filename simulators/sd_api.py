"""The behaviour of the simulated AUTOMATIC1111 WebUI API, without sockets (a test double).

`WebUIBackend.route` answers one request; `simulators.sd_webui.SDWebUISimulator` puts it
behind a real HTTP server. Generations run one at a time behind a lock, like the WebUI's
queue, and every finished job is recorded with its timings for the tests and benchmarks.
"""
from __future__ import annotations

import base64
import hmac
import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from simulators import sd_protocol
from simulators.sd_server import Reply


@dataclass(frozen=True)
class Job:
    """One finished generation: when its request arrived, started and ended (time.monotonic)."""

    arrived: float
    start: float
    end: float
    prompt: str
    payload: dict[str, Any]


class WebUIBackend:
    """Answer WebUI API requests with simulated latency, recorded jobs and injectable faults."""

    def __init__(self, latency: float = 0.0, per_step: float | None = None,
                 auth: str | tuple[str, str] | None = None) -> None:
        self.latency, self.per_step = latency, per_step
        self._auth = tuple(auth.split(":", 1)) if isinstance(auth, str) else auth
        self._state = threading.Lock()  # counters, faults, options
        self._generation = threading.Lock()  # one job at a time, like the WebUI's queue lock
        self._released = threading.Event()
        self._released.set()
        self._jobs: list[Job] = []
        self._active = self._max_active = self._in_flight = self._max_in_flight = self._pings = 0
        self._fail_left: float = 0
        self._hang_for: float | None = None
        self._die_at: int | None = None
        self._dead = False
        self._current: dict[str, Any] | None = None
        self._options = dict(sd_protocol.DEFAULT_OPTIONS)

    # -- faults ------------------------------------------------------------------------
    def fail(self, times: int | None = None) -> None:
        """Answer 500 to the next `times` jobs (None: to every job until healed)."""
        with self._state:
            self._fail_left = math.inf if times is None or times < 0 else times

    def hang(self, seconds: float = 3600.0) -> None:
        """Hold every job for `seconds` or until `release()`."""
        with self._state:
            self._hang_for = seconds
            self._released.clear()

    def release(self) -> None:
        """Let held jobs go on and stop holding new ones."""
        with self._state:
            self._hang_for = None
            self._released.set()

    def die_after(self, jobs: int) -> None:
        """Stop listening after `jobs` more finished jobs; queued requests are dropped."""
        with self._state:
            self._die_at = len(self._jobs) + jobs
        if jobs <= 0:
            self._die()

    def clear_faults(self) -> None:
        """Stop failing, holding and dying (the server's `heal` also listens again)."""
        with self._state:
            self._fail_left, self._die_at, self._dead = 0, None, False
        self.release()

    def _die(self) -> None:
        with self._state:
            self._dead, self._die_at = True, None
        self._stop_listening()

    def _stop_listening(self) -> None:
        """Close the listening socket; the HTTP server overrides this."""

    # -- what happened -----------------------------------------------------------------
    @property
    def jobs(self) -> list[Job]:
        """Return the finished generations, oldest first."""
        with self._state:
            return list(self._jobs)

    @property
    def max_concurrency(self) -> int:
        """Return the most generations ever running at once (the lock keeps it at 1)."""
        return self._max_active

    @property
    def max_in_flight(self) -> int:
        """Return the most generation requests ever open at once, queued ones included."""
        return self._max_in_flight

    @property
    def pings(self) -> int:
        """Return how many GET /internal/ping requests were answered."""
        return self._pings

    # -- the API -----------------------------------------------------------------------
    def route(self, method: str, path: str, authorization: str | None, body: bytes) -> Reply:
        """Answer one request: (status, JSON body), or (None, None) to drop the connection."""
        if path.startswith("/sdapi/") and not self._authorised(authorization):
            return 401, {"detail": "Incorrect username or password"}
        routes = {
            ("POST", "/sdapi/v1/txt2img"): lambda: self._generate("txt2img", body),
            ("POST", "/sdapi/v1/img2img"): lambda: self._generate("img2img", body),
            ("GET", "/sdapi/v1/progress"): self._progress,
            ("GET", "/sdapi/v1/options"): lambda: (200, dict(self._options)),
            ("POST", "/sdapi/v1/options"): lambda: self._set_options(body),
            ("GET", "/sdapi/v1/sd-models"): lambda: (200, sd_protocol.MODELS),
            ("GET", "/internal/ping"): self._ping,
        }
        if (method, path) in routes:
            return routes[(method, path)]()
        if any(known == path for _, known in routes):
            return 405, {"detail": "Method Not Allowed"}
        return 404, {"detail": "Not Found"}

    def _authorised(self, authorization: str | None) -> bool:
        if not self._auth:
            return True
        expected = "Basic " + base64.b64encode(":".join(self._auth).encode()).decode()
        return hmac.compare_digest((authorization or "").encode(), expected.encode())

    def _generate(self, kind: str, body: bytes) -> Reply:
        arrived = time.monotonic()
        with self._state:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            payload, problems = _decode(body)
            problems = problems or sd_protocol.validate(kind, payload)
            if problems:
                return 422, {"detail": problems}
            with self._generation:
                return self._run(kind, payload, arrived)
        finally:
            # Counted down before the reply is written, so a client that got its answer
            # and sends the next job never finds the previous one still open.
            with self._state:
                self._in_flight -= 1

    def _run(self, kind: str, payload: dict[str, Any], arrived: float) -> Reply:
        with self._state:
            if self._dead:
                return None, None
            self._active += 1
            self._max_active = max(self._max_active, self._active)
            failing, hang_for = self._fail_left > 0, self._hang_for
            self._fail_left -= 1 if failing else 0
        try:
            if failing:
                return 500, {"error": "RuntimeError", "detail": "", "body": "", "errors": "simulated failure"}
            if hang_for:
                self._released.wait(hang_for)
            return self._draw(kind, payload, arrived)
        finally:
            with self._state:
                self._active -= 1

    def _draw(self, kind: str, payload: dict[str, Any], arrived: float) -> Reply:
        start = time.monotonic()
        steps = payload.get("steps", sd_protocol.FIELD_DEFAULTS["steps"])
        duration = self.latency + (self.per_step * steps if self.per_step else 0.0)
        self._current = {"start": start, "duration": duration, "steps": steps, "kind": kind}
        reply = sd_protocol.generation_reply(payload, self._options["sd_model_checkpoint"])
        # The latency models GPU time, so drawing the PNG is part of it, not added to it.
        time.sleep(max(0.0, start + duration - time.monotonic()))
        with self._state:
            self._current = None
            if self._dead:  # the instance died during the job: like a crashed WebUI, no answer
                return None, None
            self._jobs.append(Job(arrived, start, time.monotonic(), payload.get("prompt", ""), payload))
            dying = self._die_at is not None and len(self._jobs) >= self._die_at
        if dying:
            self._die()
        return 200, reply

    def _progress(self) -> Reply:
        with self._state:
            return 200, sd_protocol.progress_reply(self._current, self._in_flight)

    def _set_options(self, body: bytes) -> Reply:
        options, problems = _decode(body)
        if problems or not isinstance(options, dict):
            problems = problems or [sd_protocol.detail([], "Input should be a valid dictionary", "dict_type")]
            return 422, {"detail": problems}
        with self._state:
            self._options.update(options)
        return 200, None

    def _ping(self) -> Reply:
        with self._state:
            self._pings += 1
        return 200, {}


def _decode(body: bytes) -> tuple[Any, list[dict[str, Any]]]:
    try:
        return json.loads(body), []
    except ValueError as e:
        return None, [sd_protocol.detail([0], f"JSON decode error: {e}", "json_invalid")]
