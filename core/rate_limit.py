"""A per-client request budget (token bucket), for the expensive POST /generate.

Off by default; `GENERATE_RATE_LIMIT` sets how many requests per minute one client
(its address: the TCP peer, or behind TRUSTED_PROXIES reverse proxies the address they
forward) may start. A client
over its budget gets 429 in the envelope with `Retry-After`.
"""
from __future__ import annotations

import logging
import math
import threading
import time

from flask import Flask, current_app, request

from core.envelope import ApiError

log = logging.getLogger(__name__)

EXTENSION = "generate_rate_limit"


class RateLimited(ApiError):
    """The client sent more requests than its budget allows."""

    status = 429

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many generation requests; retry in {math.ceil(retry_after)} s")
        self.headers["Retry-After"] = str(math.ceil(retry_after))


class TokenBucket:
    """Per-key buckets of `per_minute` tokens, refilled continuously."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one token of `key`; return 0 if granted, else the seconds until one is free."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


def client_key() -> str:
    """Return who is asking: the client's address (every participant shares the API token)."""
    return request.remote_addr or "unknown"


def enforce(bucket: TokenBucket | None) -> None:
    """Raise RateLimited when the current client has no budget left in `bucket`."""
    if bucket is None:
        return
    wait = bucket.take(client_key())
    if wait:
        raise RateLimited(wait)


def init_app(app: Flask) -> None:
    """Build the /generate bucket of `app` once when GENERATE_RATE_LIMIT > 0 (else no limit)."""
    per_minute = int(app.config.get("GENERATE_RATE_LIMIT") or 0)
    app.extensions[EXTENSION] = TokenBucket(per_minute) if per_minute > 0 else None
    if per_minute > 0:
        log.info("rate limit: %d POST /generate per minute per client address", per_minute)


def limit_generate() -> None:
    """Raise RateLimited when the current client has used up its /generate budget."""
    enforce(current_app.extensions.get(EXTENSION))
