"""The server under test: `gunicorn -c gunicorn.conf.py app:app` as a subprocess, for the benchmarks.

The environment is the production one but for the backends: GPT and Stable Diffusion
pointed at simulators, LOG_LEVEL left at its default, and gunicorn's logs written to files
in DATA_DIR. Every backend setting of the caller's environment (MONGO_*, REDIS_*, SD_*, ...)
is left out, so only what the benchmark passes counts.

The store is nx-27017 on DATA_DIR/mongo, MONGO_URI unset, as in production without a
MongoDB. With one worker (the default) the worker starts it, as `gunicorn -w 1` does. With
`own_store` (forced for `workers` > 1) the benchmark starts it before gunicorn and
supervises it, and every worker joins that one store (core.embedded_store: a process that
finds the store of its data directory supervised by another uses it), so N workers write
to one store as a production `gunicorn -w N` on one DATA_DIR does, and the benchmark knows
its pid. MONGO_URI is not used for that: a store reached through MONGO_URI is not known to
the workers as the embedded one, and they would lose its workarounds (core.embedded_store:
GridFS uploads through pymongo's uploader, which nx-27017 answers by scanning every file).

`redis` starts a redis-server of the benchmark's own (tests/redis_server.py) and sets
REDIS_URL, so the workers share the SD pool, the GPT limit and the budgets through it.
Workers are given both ways that name their number: `-w N` on the command line (over
gunicorn.conf.py) and WEB_CONCURRENCY=N.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis as redis_py

from bench import proc_stats
from core.embedded_store import EmbeddedStore

ROOT = Path(__file__).resolve().parents[1]
BACKEND_PREFIXES = ("MONGO_", "AZURE_", "OPENAI_", "SD_", "API_TOKEN", "GENERATE_RATE_LIMIT", "REDIS_", "SHARED_TTL",
                    "WEB_CONCURRENCY", "GUNICORN_")
REDIS_PREFIX = "bench:"
BOOT = 90.0  # seconds for every worker to answer, on a loaded 2-core machine


@dataclass
class Server:
    """A running gunicorn master, its workers, and what the benchmark started beside it."""

    master: subprocess.Popen
    workers: list[int]
    store: int
    data_dir: Path
    own_store: EmbeddedStore | None = None  # the store, when the benchmark started it
    redis: object | None = None  # tests.redis_server.RedisServer, when the benchmark started one

    @property
    def worker(self) -> int:
        """The first worker's pid (the only one with `workers` = 1)."""
        return self.workers[0]

    @property
    def redis_pid(self) -> int | None:
        """The redis-server's pid, when the benchmark started one."""
        return None if self.redis is None else self.redis.pid

    def stop(self) -> None:
        """Stop gunicorn gracefully, then the store and redis-server if the benchmark started them."""
        if self.master.poll() is None:
            self.master.send_signal(signal.SIGTERM)
            try:
                self.master.wait(150)  # above gunicorn's graceful_timeout
            except subprocess.TimeoutExpired:
                self.master.kill()
                self.master.wait()
        for pid in self.workers:  # started by this benchmark
            _kill_if_left(pid)
        if self.own_store is not None:
            self.own_store.stop()  # after the workers: one of them would take it over
        else:
            _kill_if_left(self.store)
        if self.redis is not None:
            self.redis.stop()

    def error_lines(self, limit: int = 20) -> list[str]:
        """Return the first `limit` lines of the server's log that report an error or a traceback."""
        text = (self.data_dir / "server.err").read_text(errors="replace")
        return [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line][:limit]


def _kill_if_left(pid: int) -> None:
    deadline = time.monotonic() + 10
    while proc_stats.command_line(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc_stats.command_line(pid):
        os.kill(pid, signal.SIGKILL)


def _wait_for_ping(master: subprocess.Popen, port: int, data_dir: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1):
                return
        except OSError:
            if master.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {master.returncode}; see {data_dir}/server.err")
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not answer /ping within 60 s")


def _wait_for_workers(master: subprocess.Popen, count: int, redis_url: str | None, prefix: str,
                      data_dir: Path) -> list[int]:
    """Wait until the master has `count` workers, each with its app built (with Redis: each marked alive)."""
    deadline = time.monotonic() + BOOT
    client = redis_py.Redis.from_url(redis_url) if redis_url else None
    try:
        while time.monotonic() < deadline:
            if master.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {master.returncode}; see {data_dir}/server.err")
            workers = [pid for pid in proc_stats.children(master.pid) if "gunicorn" in proc_stats.command_line(pid)]
            # Each worker's core.shared marks its process alive once its app is built.
            alive = len(client.keys(prefix + "process:*")) if client is not None else len(workers)
            if len(workers) == count and alive == count:
                return sorted(workers)
            time.sleep(0.1)
    finally:
        if client is not None:
            client.close()
    raise RuntimeError(f"gunicorn did not have {count} workers ready within {BOOT:g} s; see {data_dir}/server.err")


def start_server(port: int, data_dir: Path, chat_url: str, api_key: str, sd_endpoints: list[str],
                 settings: Mapping[str, str] | None = None, *, workers: int = 1, redis: bool = False,
                 own_store: bool = False) -> Server:
    """Start gunicorn with the production config (and `settings` over it) and wait until every worker serves.

    `workers` > 1 needs `redis` (the server refuses it without REDIS_URL) and starts the
    store here (`own_store`); see the module docstring.
    """
    if workers > 1 and not redis:
        raise ValueError("more than one worker needs redis=True: without it each keeps its own SD pool")
    own_store = own_store or workers > 1
    env = {k: v for k, v in os.environ.items() if not k.startswith(BACKEND_PREFIXES)}
    env.update(PORT=str(port), HOST="127.0.0.1", DATA_DIR=str(data_dir), WEB_CONCURRENCY=str(workers),
               AZURE_OPENAI_ENDPOINT=chat_url, AZURE_OPENAI_API_KEY=api_key, SD_ENDPOINTS=",".join(sd_endpoints))
    store = redis_server = master = None
    try:
        if own_store:
            store = EmbeddedStore(data_dir / "mongo").start()
        if redis:
            from tests.redis_server import RedisServer  # the suite's, reused

            (data_dir / "redis").mkdir(exist_ok=True)
            redis_server = RedisServer(data_dir / "redis").start()
            env.update(REDIS_URL=redis_server.url, REDIS_PREFIX=REDIS_PREFIX)
        env.update(settings or {})
        with open(data_dir / "server.out", "wb") as out, open(data_dir / "server.err", "wb") as err:
            master = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                                       "-w", str(workers), "app:app"], cwd=ROOT, env=env, stdout=out, stderr=err)
        _wait_for_ping(master, port, data_dir)
        pids = _wait_for_workers(master, workers, env.get("REDIS_URL"), env.get("REDIS_PREFIX", REDIS_PREFIX), data_dir)
        store_pid = store.pid if store is not None else proc_stats.only_child(pids[0], "nx_27017")
        return Server(master, pids, store_pid, data_dir, store, redis_server)
    except BaseException:
        if master is not None:
            master.terminate()  # SIGTERM: a worker stops the store it started on the way out
            try:
                master.wait(150)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait()
        if store is not None:
            store.stop()
        if redis_server is not None:
            redis_server.stop()
        raise
