"""A fair, failure-aware pool of Stable Diffusion WebUI instances shared by the whole server.

A WebUI runs one generation at a time and silently queues the rest, so sending it several
jobs stacks them on one GPU while others idle. The pool is therefore a semaphore with one
slot per instance: `acquire()` waits for a free instance and `release()` gives it back,
and `txt2img()` runs each attempt of a job between the two, releasing in a `finally`.

Waiters line up in a deque and are served strictly in arrival order: whoever frees an
instance hands it straight to the oldest waiter under the lock, so a thread arriving later
can never overtake one already waiting (a bare Condition would let it barge in). A retry
goes to the head of the line, since its job arrived before every waiter. Each waiter
sleeps on its own Event.

An instance that fails a job is set aside for `cooldown` seconds and the job is retried on
another one. Health is checked lazily, with no resident thread: the first acquire, release
or waiter wake-up after a cooldown ends starts a short-lived thread that probes the
instance (GET /internal/ping, else /sdapi/v1/progress); only a passing probe puts it back
in the pool, a failed one restarts the cooldown. When every instance is cooling down,
callers and waiters get `AllInstancesDown` at once instead of waiting for the acquire timeout.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from agent.errors import (
    INSTANCE_FAILURES, AllInstancesDown, JobContext, NoInstancesConfigured, PoolError, PoolTimeout, SDError,
)
from agent.sd import SDEndpoint, ping, text2Image
from core.image_store import Image

log = logging.getLogger(__name__)

InstanceState = Literal["idle", "busy", "cooldown", "probing"]
IDLE, BUSY, COOLDOWN, PROBING = get_args(InstanceState)
WARN_WAIT = 30.0  # a job waiting this many seconds for an instance means the pool is too small
WARN_EVERY = 60.0  # seconds between two such warnings


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


@dataclass(eq=False)
class _Instance:
    """One WebUI instance: its state in the pool and its counters (changed only under the lock)."""

    endpoint: SDEndpoint
    state: InstanceState = IDLE
    cooldown_until: float = 0.0
    leased_at: float = 0.0
    jobs: int = 0
    failures: int = 0
    busy_seconds: float = 0.0
    cooldowns: int = 0
    last_error: str = ""

    def due(self, now: float) -> bool:
        """Return whether the cooldown is over, so the instance should be probed."""
        return self.state == COOLDOWN and self.cooldown_until <= now

    def to_dict(self, now: float) -> dict[str, Any]:
        """Return the counters and state, for metrics (no credentials)."""
        busy = self.busy_seconds + (now - self.leased_at if self.state == BUSY else 0.0)
        return {
            "name": self.endpoint.name,
            "state": self.state,
            "healthy": self.state not in (COOLDOWN, PROBING),  # a probe still running proves nothing yet
            "in_flight": 1 if self.state == BUSY else 0,
            "jobs": self.jobs,
            "failures": self.failures,
            "busy_seconds": round(busy, 3),
            "cooldowns": self.cooldowns,
            "cooldown_remaining": round(max(0.0, self.cooldown_until - now), 3)
            if self.state == COOLDOWN else 0.0,
            "last_error": self.last_error,
        }


@dataclass(eq=False)
class _Waiter:
    """A thread waiting for an instance: it is handed one (or an error) and its event is set."""

    event: threading.Event = field(default_factory=threading.Event)
    instance: _Instance | None = None
    error: SDError | None = None

    def serve(self, instance: _Instance | None = None, error: SDError | None = None) -> None:
        """Hand the waiter an instance or an error and wake it."""
        self.instance, self.error = instance, error
        self.event.set()


def _job_failed(error: SDError, job: JobContext) -> SDError:
    """Return `error` as the failure of a whole job: the same kind and message, carrying `job`."""
    return type(error)(str(error), status=error.status, job=job)


class SDInstancePool:
    """Lend WebUI instances one job at a time, fairly, with failover and cooldowns."""

    def __init__(self, endpoints: Sequence[str], *, connect_timeout: float, read_timeout: float,
                 acquire_timeout: float, cooldown: float, max_attempts: int, probe_timeout: float) -> None:
        unique: dict[str, SDEndpoint] = {}
        for url in endpoints:
            endpoint = SDEndpoint.parse(url)
            if endpoint.base_url in unique:  # two leases on one WebUI would stack its queue
                log.warning("SD_ENDPOINTS lists %s twice; using it once", endpoint.name)
            unique.setdefault(endpoint.base_url, endpoint)
        self._instances = [_Instance(endpoint) for endpoint in unique.values()]
        self._by_endpoint = {instance.endpoint: instance for instance in self._instances}
        self._idle = deque(self._instances)  # least recently used first
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()
        self._timeouts = (connect_timeout, read_timeout)
        self._acquire_timeout, self._max_attempts = acquire_timeout, max(1, max_attempts)
        self._cooldown, self._probe_timeout = cooldown, probe_timeout
        self._total_wait, self._leases, self._closed = 0.0, 0, False
        self._last_warning = -WARN_EVERY
        self._probes: set[threading.Thread] = set()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SDInstancePool:
        """Build the pool from the settings (config.from_env: SD_ENDPOINTS, SD_*_TIMEOUT, ...)."""
        return cls(
            cfg["SD_ENDPOINTS"],
            connect_timeout=cfg["SD_CONNECT_TIMEOUT"],
            read_timeout=cfg["SD_READ_TIMEOUT"],
            acquire_timeout=cfg["SD_ACQUIRE_TIMEOUT"],
            cooldown=cfg["SD_COOLDOWN"],
            max_attempts=cfg["SD_MAX_ATTEMPTS"],
            probe_timeout=cfg["SD_PROBE_TIMEOUT"],
        )

    # -- the semaphore ----------------------------------------------------------------------
    def acquire(self, timeout: float | None = None, *, retry: bool = False) -> SDEndpoint:
        """Wait in line for a free instance and return it, leased to the caller alone.

        `timeout` defaults to the acquire timeout; `retry=True` waits at the head of the
        line. Raise PoolTimeout, AllInstancesDown, NoInstancesConfigured or PoolError (closed).
        """
        timeout = self._acquire_timeout if timeout is None else timeout
        start = time.monotonic()
        deadline, waiter = start + max(0.0, timeout), _Waiter()
        with self._lock:
            if self._closed:
                raise PoolError("the Stable Diffusion pool is closed")
            if not self._instances:
                raise NoInstancesConfigured("no Stable Diffusion instance is configured: set SD_ENDPOINTS")
            (self._waiters.appendleft if retry else self._waiters.append)(waiter)
            self._dispatch()
            pause = self._pause(deadline)
        # Wake at the deadline or when a cooldown ends (to start its probe), else when served.
        while not waiter.event.wait(pause):
            with self._lock:
                if waiter.event.is_set():
                    break
                if time.monotonic() >= deadline:
                    self._waiters.remove(waiter)
                    raise PoolTimeout(self._timeout_message(timeout))
                self._dispatch()
                pause = self._pause(deadline)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.instance is not None
        self._account_wait(time.monotonic() - start)
        return waiter.instance.endpoint

    def release(self, endpoint: SDEndpoint, failure: str | None = None) -> None:
        """Take a leased instance back: idle again, or cooling down when `failure` names its fault."""
        with self._lock:
            instance = self._by_endpoint[endpoint]
            if instance.state != BUSY:  # a second release would hand one instance to two jobs
                raise ValueError(f"SD instance {endpoint.name} is not leased")
            instance.busy_seconds += time.monotonic() - instance.leased_at
            self._leases += 1
            if failure is None:
                instance.jobs += 1
                instance.state = IDLE
                self._idle.append(instance)
            else:
                instance.failures += 1
                self._cool(instance, failure)
            self._dispatch()

    # -- jobs -------------------------------------------------------------------------------
    def txt2img(self, payload: dict[str, Any]) -> SDResult:
        """Run txt2img on a free instance, failing over to others; return its images.

        The SDError a failed job raises carries its `job`: the instance tried last and why
        each attempt failed.
        """
        deadline = time.monotonic() + self._acquire_timeout
        job, waited, last = JobContext(), 0.0, None
        for attempt in range(1, self._max_attempts + 1):
            asked = time.monotonic()
            try:
                # A retry goes back to the head of the line: it arrived before every waiter.
                endpoint = self.acquire(deadline - asked, retry=bool(job.errors))
            except PoolError as e:
                if not job.errors:
                    raise  # nothing was tried: the pool's own error is the whole story
                raise type(e)(f"{e}; earlier attempts: {'; '.join(job.errors)}", job=job) from e
            started = time.monotonic()
            waited += started - asked
            failure = None
            try:
                generation = text2Image(endpoint, payload, timeout=self._timeouts)
            except SDError as e:
                job, last = JobContext(endpoint.name, (*job.errors, str(e))), e
                if not isinstance(e, INSTANCE_FAILURES):  # our payload's fault: no instance would take it
                    raise _job_failed(e, job) from e
                failure = str(e)
                log.warning("SD job attempt %d of %d failed: %s", attempt, self._max_attempts, e)
                continue
            finally:
                self.release(endpoint, failure)
            return SDResult(generation.images, generation.info, endpoint.name,
                            time.monotonic() - started, waited, attempt, list(job.errors))
        # Every attempt failed. If that left no instance up, say so: it is the cause to act on.
        with self._lock:
            down = self._down_message(time.monotonic()) if self._all_down() else None
        if down is not None:
            raise AllInstancesDown(down, job=job) from last
        assert last is not None  # the loop only ends after a failed attempt
        raise _job_failed(last, job) from last

    # -- health, metrics and shutdown -------------------------------------------------------
    def probe_due(self) -> None:
        """Start health probes of instances whose cooldown is over; return at once.

        Probes otherwise start only when a job asks for an instance, so a health check calls
        this to let a fully-down pool recover while no traffic reaches it.
        """
        with self._lock:
            self._dispatch()

    def snapshot(self) -> dict[str, Any]:
        """Return the pool's counters and each instance's state (no network, no credentials)."""
        with self._lock:
            now = time.monotonic()
            return {
                "instances": [instance.to_dict(now) for instance in self._instances],
                "waiting": len(self._waiters),
                "total_queue_wait": round(self._total_wait, 3),
                "leases": self._leases,
                "closed": self._closed,
            }

    def close(self) -> None:
        """Refuse new leases, wake every waiter with PoolError and wait for running probes."""
        with self._lock:
            self._closed = True
            while self._waiters:
                self._waiters.popleft().serve(error=PoolError("the Stable Diffusion pool is closed"))
            probes = list(self._probes)
        for thread in probes:
            thread.join(self._probe_timeout + 1.0)

    # -- under the lock ---------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Hand idle instances to the oldest waiters, probe due ones, fail waiters if all are down."""
        now = time.monotonic()
        while self._waiters and self._idle:
            instance = self._idle.popleft()
            instance.state, instance.leased_at = BUSY, now
            self._waiters.popleft().serve(instance)
        for instance in self._instances:
            if instance.due(now) and not self._closed:
                instance.state = PROBING
                thread = threading.Thread(target=self._probe, args=(instance,), daemon=True,
                                          name=f"sd-probe-{instance.endpoint.name}")
                self._probes.add(thread)
                thread.start()
        if self._waiters and self._all_down():
            message = self._down_message(now)
            while self._waiters:
                self._waiters.popleft().serve(error=AllInstancesDown(message))

    def _all_down(self) -> bool:
        return bool(self._instances) and all(i.state == COOLDOWN for i in self._instances)

    def _pause(self, deadline: float) -> float:
        """Return how long a waiter may sleep: until its deadline or the next cooldown ends."""
        now = time.monotonic()
        ends = [i.cooldown_until for i in self._instances if i.state == COOLDOWN]
        return max(0.0, min([deadline - now, *(end - now + 0.001 for end in ends)]))

    def _cool(self, instance: _Instance, cause: str) -> None:
        instance.state, instance.cooldown_until = COOLDOWN, time.monotonic() + self._cooldown
        instance.cooldowns += 1
        instance.last_error = cause
        log.warning("SD instance %s set aside for %gs: %s", instance.endpoint.name, self._cooldown, cause)

    def _timeout_message(self, timeout: float) -> str:
        return (f"no Stable Diffusion instance became free within {timeout:g}s "
                f"({len(self._instances)} instances, {len(self._waiters)} other jobs waiting); "
                "add instances to SD_ENDPOINTS or raise SD_ACQUIRE_TIMEOUT")

    def _down_message(self, now: float) -> str:
        causes = "; ".join(i.last_error for i in self._instances)
        retry = min(i.cooldown_until for i in self._instances) - now
        return (f"all {len(self._instances)} Stable Diffusion instances are down "
                f"(next retry in {retry:.0f}s): {causes}")

    # -- taking the lock themselves ---------------------------------------------------------
    def _probe(self, instance: _Instance) -> None:
        """Ping an instance whose cooldown is over (on its own short thread, so no job waits for it)."""
        try:
            ping(instance.endpoint, timeout=self._probe_timeout)
            failure = None
        except Exception as e:  # any failure keeps the instance out, whatever its kind
            failure = f"probe failed: {e}"
        with self._lock:
            self._probes.discard(threading.current_thread())
            if failure is None:
                log.info("SD instance %s answers again; back in the pool", instance.endpoint.name)
                instance.state = IDLE
                self._idle.append(instance)
            else:
                self._cool(instance, failure)
            self._dispatch()

    def _account_wait(self, waited: float) -> None:
        with self._lock:
            self._total_wait += waited
            warn = waited >= WARN_WAIT and time.monotonic() - self._last_warning >= WARN_EVERY
            if warn:
                self._last_warning = time.monotonic()
            waiting = len(self._waiters)
        if warn:
            log.warning("an SD job waited %.1fs for a free instance (%d instances, %d jobs still waiting); "
                        "add WebUI instances to SD_ENDPOINTS", waited, len(self._instances), waiting)
