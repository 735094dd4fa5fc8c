"""The server under test: `gunicorn -c gunicorn.conf.py app:app` as a subprocess, for the benchmarks.

The environment is the production one but for the backends: MONGO_URI unset (so the
worker starts the embedded nx-27017 store under a temporary DATA_DIR, as in production
without a MongoDB), GPT and Stable Diffusion pointed at simulators, LOG_LEVEL left at its
default, and gunicorn's logs written to files in DATA_DIR.
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

from bench import proc_stats

ROOT = Path(__file__).resolve().parents[1]
BACKEND_PREFIXES = ("MONGO_", "AZURE_", "OPENAI_", "SD_", "API_TOKEN", "GENERATE_RATE_LIMIT")


@dataclass
class Server:
    """A running gunicorn master and the processes the benchmark watches."""

    master: subprocess.Popen
    worker: int
    store: int
    data_dir: Path

    def stop(self) -> None:
        """Stop gunicorn gracefully; make sure the worker and its store are gone too."""
        if self.master.poll() is None:
            self.master.send_signal(signal.SIGTERM)
            try:
                self.master.wait(150)  # above gunicorn's graceful_timeout
            except subprocess.TimeoutExpired:
                self.master.kill()
                self.master.wait()
        for pid in (self.worker, self.store):  # both started by this benchmark
            _kill_if_left(pid)

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


def start_server(port: int, data_dir: Path, chat_url: str, api_key: str, sd_endpoints: list[str],
                 settings: Mapping[str, str] | None = None) -> Server:
    """Start gunicorn with the production config (and `settings` over it) and wait until it answers /ping."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(BACKEND_PREFIXES)}
    env.update(PORT=str(port), HOST="127.0.0.1", DATA_DIR=str(data_dir),
               AZURE_OPENAI_ENDPOINT=chat_url, AZURE_OPENAI_API_KEY=api_key, SD_ENDPOINTS=",".join(sd_endpoints))
    env.update(settings or {})
    with open(data_dir / "server.out", "wb") as out, open(data_dir / "server.err", "wb") as err:
        master = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
                                  cwd=ROOT, env=env, stdout=out, stderr=err)
    try:
        _wait_for_ping(master, port, data_dir)
        worker = proc_stats.only_child(master.pid, "gunicorn")
        return Server(master, worker, proc_stats.only_child(worker, "nx_27017"), data_dir)
    except BaseException:
        master.terminate()  # SIGTERM: the worker stops its store on the way out
        try:
            master.wait(150)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()
        raise
