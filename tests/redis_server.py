"""A real redis-server (Debian's package) on a free loopback port, for the shared suite.

Started once per test session by the `redis_url` fixture, with no persistence and no
config file, in a temporary directory; stopped when the session ends. Where redis-server
is not installed the Redis half of the shared suite is skipped, with the reason in the
report header and on each skip (`.ci/run` installs it, so CI never skips).
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from core.embedded_store import free_port

MISSING = "redis-server is not installed (apt-get install -y redis-server): the Redis half of the shared suite is skipped"


def binary() -> str | None:
    """Return the path of redis-server, or None when it is not installed."""
    return shutil.which("redis-server")


def version() -> str:
    """Return redis-server's version line, or why it cannot run."""
    path = binary()
    if path is None:
        return MISSING
    return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()


class RedisServer:
    """One redis-server process on a free loopback port; `url` reaches it."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (for benchmarks that watch its CPU)."""
        return None if self._process is None else self._process.pid

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and return once it answers PING."""
        path = binary()
        if path is None:
            raise FileNotFoundError(MISSING)
        self._process = subprocess.Popen(
            [path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self._process.poll() is not None:
                        raise RuntimeError(f"redis-server exited: {self._process.stderr.read().decode()}")
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        self._process.stderr.close()
        self._process = None
