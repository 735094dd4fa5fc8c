"""The production server, `gunicorn -c gunicorn.conf.py app:app`, as a subprocess of a test or a benchmark."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests

from bench import proc_stats
from config import from_env
from core.embedded_store import free_port
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[1]


def production_env(**settings: str) -> dict[str, str]:
    """Return the server's environment: every setting it reads set, to `settings` or empty (its default).

    So neither the caller's environment nor a .env file can change what a test runs.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUNICORN_")}
    env.update({name: "" for name in from_env({})})
    env.update(settings)
    return env


class Gunicorn:
    """The production server as a subprocess, its output collected line by line."""

    def __init__(self, env: dict[str, str], args: Sequence[str] = ()) -> None:
        """Start it with `env`, and `args` for gunicorn's command line (they override gunicorn.conf.py)."""
        self.lines: list[str] = []
        self.port = int(env["PORT"])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *args, "app:app"], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def said(self, text: str) -> bool:
        """Return whether any output line so far contains `text`."""
        return any(text in line for line in list(self.lines))

    def worker(self) -> int:
        """Return the process id of its one worker."""
        return proc_stats.only_child(self.process.pid, "gunicorn")

    def close(self) -> None:
        """Kill the server if it still runs and collect its output."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._reader.join(10)
        self.process.stdout.close()


def pings(base: str) -> bool:
    """Return whether the server at `base` answers /ping (False while it is still starting)."""
    try:
        return requests.get(base + "/ping", timeout=1).text == "pong"
    except requests.RequestException:  # not listening yet, or the worker is still booting
        return False


@contextmanager
def serving(args: Sequence[str] = (), **settings: str) -> Iterator[Gunicorn]:
    """Run the server on a free loopback port with `settings` (and gunicorn `args`) for the block, then stop it."""
    server = Gunicorn(production_env(HOST="127.0.0.1", PORT=str(free_port()), **settings), args)
    try:
        wait_until(lambda: pings(f"http://127.0.0.1:{server.port}"), 120, "gunicorn to answer")
        yield server
        server.process.terminate()  # gracefully: the worker stops what it started
        server.process.wait(150)
    finally:
        server.close()
