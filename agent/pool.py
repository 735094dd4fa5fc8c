"""A fair, failure-aware pool of Stable Diffusion WebUI instances shared by the whole server.

A WebUI runs one generation at a time and silently queues the rest, so sending it several
jobs stacks them on one GPU while others idle. The pool therefore leases each instance to
one job at a time, to waiting threads in strict arrival order (`agent.pool_queue`): a
releasing thread hands the instance straight to the oldest waiter, so no newcomer overtakes it.

An instance that fails a job is set aside for `cooldown` seconds and the job is retried on
another one. Health is checked lazily, with no resident thread: the first lease, release or
waiter wake-up after a cooldown ends starts a short-lived thread that probes the instance
(GET /internal/ping, else /sdapi/v1/progress); only a passing probe puts it back in the
pool, a failed one restarts the cooldown. When every instance is cooling down, callers and
waiters get `AllInstancesDown` at once instead of waiting for the acquire timeout.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from agent.pool_queue import LeaseQueue
from agent.sd import Generation, SDEndpoint, text2Image
from core.image_store import Image
from agent.errors import INSTANCE_FAILURES, AllInstancesDown, PoolError, SDError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SDResult:
    """The images of one job (decoded, never empty) and how the pool got them."""

    images: list[Image]
    info: dict[str, Any]
    instance: str
    latency: float
    queue_wait: float
    attempts: int
    errors: list[str] = field(default_factory=list)


def _tried(error: SDError, errors: list[str]) -> SDError:
    """Attach the failed attempts of a job to `error`, for the generation record; return it."""
    error.attempts, error.errors = len(errors), list(errors)
    return error


class SDInstancePool:
    """Lease WebUI instances one job at a time, fairly, with failover and cooldowns."""

    def __init__(self, endpoints: Sequence[str], *, connect_timeout: float = 3.0,
                 read_timeout: float = 300.0, acquire_timeout: float = 600.0, cooldown: float = 15.0,
                 max_attempts: int = 3, probe_timeout: float = 2.0, warn_wait: float = 30.0) -> None:
        unique: dict[str, SDEndpoint] = {}
        for url in endpoints:
            endpoint = SDEndpoint.parse(url)
            if endpoint.base_url in unique:  # two leases on one WebUI would stack its queue
                log.warning("SD_ENDPOINTS lists %s twice; using it once", endpoint.name)
            unique.setdefault(endpoint.base_url, endpoint)
        self._queue = LeaseQueue(list(unique.values()), cooldown=cooldown, probe_timeout=probe_timeout,
                                 warn_wait=warn_wait)
        self._timeouts = (connect_timeout, read_timeout)
        self._acquire_timeout, self._max_attempts = acquire_timeout, max(1, max_attempts)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SDInstancePool:
        """Build the pool from the app config (SD_ENDPOINTS, SD_*_TIMEOUT, SD_COOLDOWN, ...)."""
        endpoints = cfg.get("SD_ENDPOINTS") or []
        if isinstance(endpoints, str):
            endpoints = [url.strip() for url in endpoints.split(",") if url.strip()]
        return cls(
            endpoints,
            connect_timeout=float(cfg.get("SD_CONNECT_TIMEOUT", 3.0)),
            read_timeout=float(cfg.get("SD_READ_TIMEOUT", 300.0)),
            acquire_timeout=float(cfg.get("SD_ACQUIRE_TIMEOUT", 600.0)),
            cooldown=float(cfg.get("SD_COOLDOWN", 15.0)),
            max_attempts=int(cfg.get("SD_MAX_ATTEMPTS", 3)),
            probe_timeout=float(cfg.get("SD_PROBE_TIMEOUT", 2.0)),
        )

    # -- jobs ---------------------------------------------------------------------------
    def txt2img(self, payload: dict[str, Any]) -> SDResult:
        """Run txt2img on a free instance, failing over to others; return its images."""
        return self._run(text2Image, payload)

    def _run(self, call: Callable[..., Generation], payload: dict[str, Any]) -> SDResult:
        deadline = time.monotonic() + self._acquire_timeout
        errors: list[str] = []
        waited, last = 0.0, None
        for attempt in range(1, self._max_attempts + 1):
            try:
                # A retry goes back to the head of the queue: it arrived before every waiter.
                instance, wait = self._queue.acquire(deadline - time.monotonic(), retry=bool(errors))
            except PoolError as e:
                if not errors:
                    raise _tried(e, errors)
                raise _tried(type(e)(f"{e}; earlier attempts: {'; '.join(errors)}"), errors) from e
            waited += wait
            started, failure = time.monotonic(), None
            try:
                generation = call(instance.endpoint, payload, timeout=self._timeouts)
            except INSTANCE_FAILURES as e:
                failure, last = str(e), e
                errors.append(failure)
                log.warning("SD job attempt %d of %d failed: %s", attempt, self._max_attempts, e)
                continue
            finally:
                self._queue.release(instance, failure)
            return SDResult(generation.images, generation.info, instance.endpoint.name,
                            time.monotonic() - started, waited, attempt, errors)
        # Every attempt failed. If that left no instance up, say so: it is the cause to act on.
        down = self._queue.down_message()
        if down is not None:
            raise _tried(AllInstancesDown(down), errors) from last
        assert last is not None  # the loop only ends after a failed attempt
        raise _tried(last, errors)

    @contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[SDEndpoint]:
        """Wait for a free instance (FIFO) and lend it to the block; an SD failure there cools it down."""
        instance, _ = self._queue.acquire(self._acquire_timeout if timeout is None else timeout)
        failure = None
        try:
            yield instance.endpoint
        except INSTANCE_FAILURES as e:
            failure = str(e)
            raise
        finally:
            self._queue.release(instance, failure)

    # -- health, metrics and shutdown -------------------------------------------------------
    def probe_due(self) -> None:
        """Start health probes of instances whose cooldown is over; return at once.

        Probes otherwise start only when a job asks for an instance, so a health check calls
        this to let a fully-down pool recover while no traffic reaches it.
        """
        self._queue.probe_due()

    def snapshot(self) -> dict[str, Any]:
        """Return the pool's counters and each instance's state (no network, no credentials)."""
        return self._queue.snapshot()

    def close(self) -> None:
        """Refuse new leases, wake every waiter with PoolError and wait for running probes."""
        self._queue.close()
