"""The fair lease queue behind `agent.pool.SDInstancePool`: who gets which instance, and when.

Waiters line up in a deque and are served strictly in order: whoever frees an instance
hands it straight to the oldest waiter under the lock, so a thread arriving later can never
overtake one already waiting (a bare Condition would let it barge in). Each waiter sleeps
on its own Event. A failed instance cools down; once the cooldown is over, the next
acquire, release or waiter wake-up starts a short-lived thread that probes it, and only a
passing probe puts it back in line for work.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from agent.pool_state import BUSY, COOLDOWN, IDLE, PROBING, Instance, Waiter
from agent.sd import SDEndpoint, ping
from agent.errors import AllInstancesDown, NoInstancesConfigured, PoolError, PoolTimeout

log = logging.getLogger(__name__)
WARN_EVERY = 60.0  # seconds between two "queue too long" warnings


class LeaseQueue:
    """Lease instances one job at a time, in arrival order, skipping those cooling down."""

    def __init__(self, endpoints: Sequence[SDEndpoint], *, cooldown: float, probe_timeout: float,
                 warn_wait: float) -> None:
        self._instances = [Instance(endpoint) for endpoint in endpoints]
        self._idle = deque(self._instances)  # least recently used first
        self._waiters: deque[Waiter] = deque()
        self._lock = threading.Lock()
        self._cooldown, self._probe_timeout = cooldown, probe_timeout
        self._warn_wait, self._last_warning = warn_wait, -WARN_EVERY
        self._total_wait, self._leases, self._closed = 0.0, 0, False
        self._probes: set[threading.Thread] = set()

    def acquire(self, timeout: float, retry: bool = False) -> tuple[Instance, float]:
        """Wait in line for an instance; return it, marked busy, and the seconds waited."""
        start = time.monotonic()
        deadline, waiter = start + max(0.0, timeout), Waiter()
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
        return waiter.instance, self._account_wait(time.monotonic() - start)

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
        if self._waiters and all(i.state == COOLDOWN for i in self._instances):
            error = AllInstancesDown(self._down_message(now))
            while self._waiters:
                self._waiters.popleft().serve(error=error)

    def _pause(self, deadline: float) -> float:
        """Return how long a waiter may sleep: until its deadline or the next cooldown ends."""
        now = time.monotonic()
        ends = [i.cooldown_until for i in self._instances if i.state == COOLDOWN]
        return max(0.0, min([deadline - now, *(end - now + 0.001 for end in ends)]))

    def _probe(self, instance: Instance) -> None:
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

    def release(self, instance: Instance, failure: str | None) -> None:
        """Take a leased instance back: idle again, or cooling down when `failure` names a fault."""
        with self._lock:
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

    def _cool(self, instance: Instance, cause: str) -> None:
        instance.state, instance.cooldown_until = COOLDOWN, time.monotonic() + self._cooldown
        instance.cooldowns += 1
        instance.last_error = cause
        log.warning("SD instance %s set aside for %gs: %s", instance.endpoint.name, self._cooldown, cause)

    def _account_wait(self, waited: float) -> float:
        with self._lock:
            self._total_wait += waited
            warn = waited >= self._warn_wait and time.monotonic() - self._last_warning >= WARN_EVERY
            if warn:
                self._last_warning = time.monotonic()
            waiting = len(self._waiters)
        if warn:
            log.warning("an SD job waited %.1fs for a free instance (%d instances, %d jobs still waiting); "
                        "add WebUI instances to SD_ENDPOINTS", waited, len(self._instances), waiting)
        return waited

    def probe_due(self) -> None:
        """Start probes of instances whose cooldown is over, without waiting for them or leasing."""
        with self._lock:
            self._dispatch()

    def down_message(self) -> str | None:
        """Return why no instance can work when every one is cooling down, else None."""
        with self._lock:
            if self._instances and all(i.state == COOLDOWN for i in self._instances):
                return self._down_message(time.monotonic())
        return None

    def _timeout_message(self, timeout: float) -> str:
        return (f"no Stable Diffusion instance became free within {timeout:g}s "
                f"({len(self._instances)} instances, {len(self._waiters)} other jobs waiting); "
                "add instances to SD_ENDPOINTS or raise SD_ACQUIRE_TIMEOUT")

    def _down_message(self, now: float) -> str:
        causes = "; ".join(i.last_error for i in self._instances)
        retry = min(i.cooldown_until for i in self._instances) - now
        return (f"all {len(self._instances)} Stable Diffusion instances are down "
                f"(next retry in {retry:.0f}s): {causes}")

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
            error = PoolError("the Stable Diffusion pool is closed")
            while self._waiters:
                self._waiters.popleft().serve(error=error)
            probes = list(self._probes)
        for thread in probes:
            thread.join(self._probe_timeout + 1.0)
