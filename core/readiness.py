"""Is the server ready for participants? The checks behind GET /readyz.

Cheap by design: one MongoDB ping with a short timeout, and the snapshots the SD pool
and the GPT client keep anyway. No model is called and no WebUI is contacted. Ready
means a generation can work: the database answers, GPT is configured, and at least one
Stable Diffusion instance is configured and healthy (SD_ENDPOINTS empty is not ready,
since every pipeline draws images). GPT failures never make it not ready (the client
cannot tell a broken key from a passing 429 storm); they are reported as "degraded".
"""
from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from flask import Flask

from agent.gpt import NOT_CONFIGURED
from core.backends import GPT, SD_POOL

DB_PING_TIMEOUT = 1.0  # seconds: a load balancer's probe must not hang on a dead database
RECENT_WINDOW = 300.0  # seconds of GPT failures reported as "recent"
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")  # user:pass@ in any URL


class RecentFailures:
    """GPT failures by kind over about the last `window` seconds, from cumulative totals.

    Each read keeps a sample of the totals (at most one per `every` seconds); the answer is
    the difference to the newest sample at least `window` old, or to the oldest one kept.
    """

    def __init__(self, window: float = RECENT_WINDOW, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.every, self.clock = window, every, clock
        self._samples: deque[tuple[float, dict[str, int]]] = deque([(clock(), {})])
        self._lock = threading.Lock()

    def update(self, totals: dict[str, int]) -> tuple[dict[str, int], float]:
        """Record `totals`; return the failures since the baseline sample and its age in seconds."""
        now = self.clock()
        with self._lock:
            if now - self._samples[-1][0] >= self.every:
                self._samples.append((now, dict(totals)))
            while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
                self._samples.popleft()
            since, base = self._samples[0]
        recent = {kind: n - base.get(kind, 0) for kind, n in totals.items() if n > base.get(kind, 0)}
        return recent, now - since


def _scrub(text: str) -> str:
    """Return `text` without URL credentials (error texts should hold none; make sure)."""
    return _CREDENTIALS.sub("", text or "")


def database_status(app: Flask) -> dict[str, Any]:
    """Ping MongoDB within a short timeout."""
    timeout = min(DB_PING_TIMEOUT, app.config["MONGO_TIMEOUT_MS"] / 1000)
    return {"reachable": app.extensions["mongo"].ping(timeout=timeout)}


def sd_status(app: Flask) -> dict[str, Any]:
    """Summarise the SD pool: counts, and each instance's name, state and last error."""
    pool = app.extensions[SD_POOL]
    pool.probe_due()  # recover instances whose cooldown ended, even while no job asks for one
    snap = pool.snapshot()
    instances = [{"name": i["name"], "state": i["state"], "healthy": i["healthy"],
                  "cooldown_remaining": i["cooldown_remaining"], "last_error": _scrub(i["last_error"])}
                 for i in snap["instances"]]
    return {"total": len(instances), "healthy": sum(1 for i in instances if i["healthy"]),
            "busy": sum(1 for i in instances if i["state"] == "busy"), "waiting": snap["waiting"],
            "closed": snap["closed"], "instances": instances}


def gpt_status(app: Flask) -> dict[str, Any]:
    """Summarise the GPT client: provider, deployments, and failures by kind (recent and total)."""
    gpt = app.extensions[GPT]
    snap = gpt.snapshot()
    totals: dict[str, int] = {}
    for counters in snap["deployments"].values():
        for kind, count in counters["failures"].items():
            totals[kind] = totals.get(kind, 0) + count
    window: RecentFailures = app.extensions.setdefault("readiness_gpt_failures", RecentFailures())
    recent, over = window.update(totals)
    return {"configured": snap["configured"], "provider": snap["provider"],
            "chat_deployment": gpt.chat_deployment, "vision_deployment": gpt.vision_deployment,
            "deployments": snap["deployments"], "recent_failures": recent,
            "recent_seconds": max(1, math.ceil(over)), "failures_total": totals}


def _problems(db: dict[str, Any], sd: dict[str, Any], gpt: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Return what makes the server not ready, and what merely degrades it."""
    failing, degraded = [], []
    if not db["reachable"]:
        failing.append("database unreachable")
    down = ", ".join(i["name"] for i in sd["instances"] if not i["healthy"])
    if sd["closed"]:
        failing.append("SD pool closed (shutting down)")
    elif sd["total"] == 0:
        failing.append("no SD instances configured (set SD_ENDPOINTS)")
    elif sd["healthy"] == 0:
        failing.append(f"0 of {sd['total']} SD instances healthy (down: {down})")
    elif down:
        degraded.append(f"{sd['healthy']} of {sd['total']} SD instances healthy (down: {down})")
    if not gpt["configured"]:
        failing.append(f"GPT {NOT_CONFIGURED}")
    elif gpt["recent_failures"]:
        kinds = ", ".join(f"{kind}={n}" for kind, n in sorted(gpt["recent_failures"].items()))
        degraded.append(f"GPT failures in the last {gpt['recent_seconds']} s: {kinds}")
    return failing, degraded


def check(app: Flask) -> tuple[bool, dict[str, Any], str]:
    """Return whether `app` is ready, the details of every backend, and a one-line message."""
    data = {"database": database_status(app), "sd": sd_status(app), "gpt": gpt_status(app)}
    failing, degraded = _problems(data["database"], data["sd"], data["gpt"])
    if failing:
        message = "not ready: " + "; ".join(failing + degraded)
    else:
        message = "ready" + ("; degraded: " + "; ".join(degraded) if degraded else "")
    return not failing, data, message
