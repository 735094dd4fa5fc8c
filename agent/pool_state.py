"""The bookkeeping behind `agent.pool.SDInstancePool`: one record per WebUI instance.

Not thread-safe on its own: the pool changes these records only under its lock.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from agent.sd import SDEndpoint
from agent.errors import SDError

IDLE, BUSY, COOLDOWN, PROBING = "idle", "busy", "cooldown", "probing"


@dataclass(eq=False)
class Instance:
    """One WebUI instance: its state in the pool and its counters."""

    endpoint: SDEndpoint
    state: str = IDLE
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
class Waiter:
    """A thread waiting for an instance: it is handed one (or an error) and its event is set."""

    event: threading.Event = field(default_factory=threading.Event)
    instance: Instance | None = None
    error: SDError | None = None

    def serve(self, instance: Instance | None = None, error: SDError | None = None) -> None:
        """Hand the waiter an instance or an error and wake it."""
        self.instance, self.error = instance, error
        self.event.set()
