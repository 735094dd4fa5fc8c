"""What the processes of one deployment share: kept in this process alone, or in Redis.

A server process alone (the embedded default, `gunicorn -w 1`) keeps everything it must
coordinate in its own memory. Several processes (`gunicorn -w N`, or several hosts behind
one load balancer) must agree on it instead: which WebUI instance runs whose image, whose
turn is next, how many GPT calls are in flight, how much of a client's /generate budget is
left, and what each job has told. With REDIS_URL set those live in Redis (6.2 or later),
every atomic step one Lua script, every wait a blocking command or a subscription.

`Shared` is the one interface; `InProcess` and `InRedis` its two implementations, chosen by
`from_config`. The parts of the server that need it (agent.pool, agent.gpt, core.security,
apps.jobs) ask it for what they need:

- `semaphore(name, limit)`: at most `limit` holders at once across the deployment
  (GPT_MAX_CONCURRENCY per deployment). In Redis a holder's slot has an expiry that its
  process renews, so the slots of a killed process come back.
- `bucket(name, per_minute)`: token buckets per key (the /generate rate limit).
- `process` and `liveness`: in Redis, each process marks itself alive under
  `<prefix>process:<id>` every `ttl / 3` seconds, and renews what it holds (`on_beat`); what
  a process that stopped beating held expires `ttl` seconds after its last beat.

Every key starts with REDIS_PREFIX (default "refinity:"), so one Redis can serve several
deployments; README.md lists each key and what it holds.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis

from agent.errors import BackendError

log = logging.getLogger(__name__)

EXTENSION = "shared"
REPLY_TIMEOUT = 5.0  # seconds Redis may take to answer a command that does not block


# -- the interface -------------------------------------------------------------------------
class SharedUnavailable(BackendError):
    """Redis, through which the deployment's processes share their state, could not be reached (503)."""

    backend = "redis"


class Semaphore:
    """At most `limit` holders at once; `acquire` waits (up to `timeout`) for a slot and returns its token."""

    limit: int

    def acquire(self, timeout: float | None = None) -> str | None:
        """Take a slot and return its token, or None when `timeout` seconds passed first (None: wait for ever)."""
        raise NotImplementedError

    def release(self, token: str) -> None:
        """Give back the slot `token` names (giving back one that expired is harmless)."""
        raise NotImplementedError

    def try_acquire(self) -> str | None:
        """Take a slot if one is free now; else return None."""
        return self.acquire(timeout=0)

    @contextmanager
    def holding(self) -> Iterator[str]:
        """Hold a slot for the block, waiting as long as it takes."""
        token = self.acquire()
        assert token is not None  # no timeout: it waits until it has one
        try:
            yield token
        finally:
            self.release(token)


class Bucket:
    """Token buckets per key, `per_minute` tokens each, refilled continuously."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0

    def take(self, key: str) -> float:
        """Spend one token of `key`; return 0 if granted, else the seconds until one is free."""
        raise NotImplementedError

    def _refill(self, tokens: float, last: float, now: float) -> tuple[float, float]:
        """Return (tokens after spending one or not, seconds to wait): the bucket's one rule."""
        tokens = min(self.capacity, tokens + max(0.0, now - last) * self.rate)
        if tokens >= 1:
            return tokens - 1, 0.0
        return tokens, (1 - tokens) / self.rate


class Shared:
    """What the processes of one deployment share; see the module docstring."""

    kind: str  # "process" or "redis", for /metrics and the logs

    def semaphore(self, name: str, limit: int) -> Semaphore:
        """Return the semaphore `name` of at most `limit` holders (the same object for the same name)."""
        raise NotImplementedError

    def bucket(self, name: str, per_minute: int) -> Bucket:
        """Return the token buckets `name` of `per_minute` tokens per key."""
        raise NotImplementedError

    def describe(self) -> str:
        """Return where the shared state lives, without credentials."""
        raise NotImplementedError

    def reachable(self) -> bool:
        """Return whether the shared state answers now (quickly: /readyz asks)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop what runs in the background (what it holds expires on its own)."""


# -- in this process -----------------------------------------------------------------------
class _LocalSemaphore(Semaphore):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def acquire(self, timeout: float | None = None) -> str | None:
        if timeout is not None and timeout <= 0:
            return "slot" if self._slots.acquire(blocking=False) else None
        return "slot" if self._slots.acquire(timeout=timeout) else None

    def release(self, token: str) -> None:
        self._slots.release()


class _LocalBucket(Bucket):
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(per_minute)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens, wait = self._refill(tokens, last, now)
            self._buckets[key] = (tokens, now)
            return wait


class InProcess(Shared):
    """Everything in this process's memory: right for one server process, and only for one."""

    kind = "process"

    def __init__(self) -> None:
        self._semaphores: dict[str, _LocalSemaphore] = {}
        self._lock = threading.Lock()

    def semaphore(self, name: str, limit: int) -> Semaphore:
        with self._lock:
            return self._semaphores.setdefault(name, _LocalSemaphore(limit))

    def bucket(self, name: str, per_minute: int) -> Bucket:
        return _LocalBucket(per_minute)

    def describe(self) -> str:
        return "this process (set REDIS_URL to share it between processes)"

    def reachable(self) -> bool:
        return True


# -- in Redis ------------------------------------------------------------------------------
_TAKE_SLOT = """
-- KEYS[1] the holders (token -> deadline, ms); ARGV: limit, token, ttl ms
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  return -1
end
-- Full: how long until the first holder's slot expires, unless it is given back first.
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(first[2]) - now)
"""

_GIVE_SLOT = """
-- KEYS[1] the holders, KEYS[2] the wake-up list; ARGV: token, limit
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], 1)
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
  redis.call('PEXPIRE', KEYS[2], 60000)
end
return 0
"""

_RENEW_SLOTS = """
-- KEYS[1] the holders; ARGV: ttl ms, tokens...
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 0
"""

_TAKE_TOKEN = """
-- KEYS[1] one key's bucket {tokens, last}; ARGV: capacity, rate per second
local t = redis.call('TIME')
local now = t[1] + t[2] / 1000000
local capacity, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens, last = tonumber(held[1]) or capacity, tonumber(held[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - last) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return tostring(wait)
"""


class _RedisSemaphore(Semaphore):
    """Holders in a sorted set by deadline; a release pushes onto a list that waiters block on."""

    def __init__(self, shared: InRedis, name: str, limit: int, beats: list[Callable[[], None]]) -> None:
        self.shared, self.limit = shared, limit
        self._holders, self._wake = shared.key("slots", name), shared.key("slots", name, "wake")
        self._take = shared.client.register_script(_TAKE_SLOT)
        self._give = shared.client.register_script(_GIVE_SLOT)
        self._renew = shared.client.register_script(_RENEW_SLOTS)
        self._held: set[str] = set()
        self._lock = threading.Lock()
        beats.append(self._beat)  # built under the shared state's lock

    def acquire(self, timeout: float | None = None) -> str | None:
        token = f"{self.shared.process}:{uuid.uuid4().hex[:12]}"
        deadline = None if timeout is None else time.monotonic() + timeout
        ttl = self.shared.ttl_ms
        while True:
            with self._lock:  # held before it is taken, so a beat never misses it
                self._held.add(token)
            wait_ms = None
            try:
                with self.shared.reaching():
                    wait_ms = self._take(keys=[self._holders], args=[self.limit, token, ttl])
            finally:
                if wait_ms != -1:  # not taken, or Redis failed: nothing to renew
                    with self._lock:
                        self._held.discard(token)
            if wait_ms == -1:
                return token
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            # Woken by a release, or when the first holder's slot would expire anyway.
            block = wait_ms / 1000 if left is None else min(left, wait_ms / 1000)
            with self.shared.reaching():
                self.shared.blocking.blpop([self._wake], timeout=max(0.01, block))

    def release(self, token: str) -> None:
        with self._lock:
            self._held.discard(token)
        try:
            self._give(keys=[self._holders, self._wake], args=[token, self.limit])
        except redis.RedisError as error:  # the work is done: its slot expires on its own within the ttl
            log.warning("could not give a slot of %s back to Redis (it expires on its own): %s", self._holders, error)

    def _beat(self) -> None:
        with self._lock:
            held = list(self._held)
        if held:
            self._renew(keys=[self._holders], args=[self.shared.ttl_ms, *held])


class _RedisBucket(Bucket):
    def __init__(self, shared: InRedis, name: str, per_minute: int) -> None:
        super().__init__(per_minute)
        self.shared, self.name = shared, name
        self._take = shared.client.register_script(_TAKE_TOKEN)

    def take(self, key: str) -> float:
        with self.shared.reaching():
            return float(self._take(keys=[self.shared.key("bucket", self.name, key)],
                                    args=[self.capacity, self.rate]))


class InRedis(Shared):
    """Everything in one Redis, for every process of the deployment; see the module docstring."""

    kind = "redis"

    def __init__(self, url: str, *, prefix: str = "refinity:", ttl: float = 10.0) -> None:
        self.url, self.prefix, self.ttl = url, prefix, ttl
        # Commands answer at once, so a Redis that stops answering fails them within REPLY_TIMEOUT;
        # the blocking waits (BLPOP, XREAD BLOCK) go through `blocking`, which waits as long as they
        # ask. Each wait holds a connection: its pool grows with them (redis-py's is unbounded).
        self.client = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30,
                                           socket_connect_timeout=5, socket_timeout=REPLY_TIMEOUT)
        self.blocking = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30,
                                             socket_connect_timeout=5, socket_timeout=None)
        self._probe = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)  # for /readyz
        self.process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._beats: list[Callable[[], None]] = []
        self._semaphores: dict[str, _RedisSemaphore] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        try:
            self._beat_once()
        except redis.RedisError as error:  # /readyz says so, and every beat tries again
            log.warning("Redis is unreachable as this process starts (%s): %s", self.describe(), error)
        self._thread = threading.Thread(target=self._beating, name="shared-liveness", daemon=True)
        self._thread.start()

    @property
    def ttl_ms(self) -> int:
        """How long what a process holds outlives its last beat, in milliseconds."""
        return int(self.ttl * 1000)

    def key(self, *parts: str) -> str:
        """Return the Redis key of `parts` under this deployment's prefix."""
        return self.prefix + ":".join(parts)

    def process_key(self, process: str) -> str:
        """Return the key that says `process` is alive while it exists."""
        return self.key("process", process)

    @contextmanager
    def reaching(self) -> Iterator[None]:
        """Raise a failure to reach Redis in the block as SharedUnavailable: a backend's failure, a clear 503."""
        try:
            yield
        except redis.RedisError as error:
            raise SharedUnavailable(f"Redis, which this deployment's processes share their state through, "
                                    f"failed: {type(error).__name__}: {error}") from error

    def on_beat(self, renew: Callable[[], None]) -> None:
        """Call `renew` on every beat of this process (it renews what it holds)."""
        with self._lock:
            self._beats.append(renew)

    def semaphore(self, name: str, limit: int) -> Semaphore:
        with self._lock:
            if name not in self._semaphores:  # building it sends nothing to Redis
                self._semaphores[name] = _RedisSemaphore(self, name, limit, self._beats)
            return self._semaphores[name]

    def bucket(self, name: str, per_minute: int) -> Bucket:
        return _RedisBucket(self, name, per_minute)

    def reachable(self) -> bool:
        try:
            return bool(self._probe.ping())
        except redis.RedisError:
            return False

    def describe(self) -> str:
        kwargs = self.client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"Redis at {where}, db {kwargs.get('db', 0)}, keys {self.prefix}*"

    def beat(self) -> None:
        """Mark this process alive and renew what it holds now, not at the next beat (its errors are raised)."""
        with self.reaching():
            self._beat_once()

    def _beat_once(self) -> None:
        self.client.set(self.process_key(self.process), str(time.time()), px=self.ttl_ms)
        with self._lock:
            beats = list(self._beats)
        for renew in beats:
            renew()

    def _beating(self) -> None:
        while not self._closed.wait(self.ttl / 3):
            try:
                self._beat_once()
            except (redis.RedisError, SharedUnavailable) as error:  # what it holds expires if this goes on for ttl
                log.warning("could not mark this process alive in Redis: %s", error)
            except Exception:
                log.exception("a renewal on this process's beat failed")

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2.0)
        try:
            self.client.delete(self.process_key(self.process))
        except redis.RedisError:
            pass
        self.client.close()
        self.blocking.close()
        self._probe.close()


def from_config(cfg: Mapping[str, Any]) -> Shared:
    """Return the deployment's shared state: in Redis when REDIS_URL is set, else in this process."""
    if cfg.get("REDIS_URL"):
        return InRedis(cfg["REDIS_URL"], prefix=cfg["REDIS_PREFIX"], ttl=cfg["SHARED_TTL"])
    return InProcess()


def init_app(app: Any) -> Shared:
    """Give the app its shared state (before the backends, which use it)."""
    shared = from_config(app.config)
    app.extensions[EXTENSION] = shared
    log.info("shared state: %s", shared.describe())
    return shared


def get_shared() -> Shared:
    """Return the current app's shared state."""
    from flask import current_app

    return current_app.extensions[EXTENSION]
