"""Who may call the API, and how much: CORS for the browser client, the optional bearer token, and
a per-client budget (token bucket) for the expensive POST /generate.

The budget is off by default; `GENERATE_RATE_LIMIT` sets how many requests per minute one
client (its address: the TCP peer, or behind TRUSTED_PROXIES reverse proxies the address
they forward) may start. A client over its budget gets 429 in the envelope with `Retry-After`.
"""
from __future__ import annotations

import hmac
import logging
import math
import threading
import time

from flask import Flask, current_app, request
from flask_cors import CORS

from core.envelope import ApiError

log = logging.getLogger(__name__)

EXTENSION = "generate_rate_limit"

# Probes and preflights must work without the token: browsers never send Authorization
# on an OPTIONS preflight, and load balancers poll health routes anonymously.
OPEN_PATHS = {"/ping", "/healthz", "/readyz"}


class Unauthorized(ApiError):
    """The request lacks the bearer token the server requires."""

    status = 401


def _require_token(token: str) -> None:
    if request.method == "OPTIONS" or request.path in OPEN_PATHS:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("missing or wrong bearer token: send Authorization: Bearer <API_TOKEN>")


def init_app(app: Flask) -> None:
    """Enable CORS for `CORS_ORIGINS`, require `API_TOKEN` when it is set, and budget /generate."""
    CORS(
        app,
        origins=app.config["CORS_ORIGINS"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["X-Request-ID"],
        max_age=600,
    )
    token = app.config.get("API_TOKEN")
    if token:
        app.before_request(lambda: _require_token(token))
    _init_rate_limit(app)


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


def _init_rate_limit(app: Flask) -> None:
    """Build the /generate bucket of `app` once when GENERATE_RATE_LIMIT > 0 (else no limit)."""
    per_minute = int(app.config.get("GENERATE_RATE_LIMIT") or 0)
    app.extensions[EXTENSION] = TokenBucket(per_minute) if per_minute > 0 else None
    if per_minute > 0:
        log.info("rate limit: %d POST /generate per minute per client address", per_minute)


def limit_generate() -> None:
    """Raise RateLimited when the current client has used up its /generate budget."""
    enforce(current_app.extensions.get(EXTENSION))
