"""The production server (`gunicorn -c gunicorn.conf.py app:app`) on a free loopback port, for a block of a test or a benchmark."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from bench import proc_stats
from core.embedded_store import free_port
from tests.helpers import GUNICORN, ServerProcess, answers_ping, server_env, wait_until


class Gunicorn(ServerProcess):
    """The production server with `settings`, gunicorn options `args` overriding gunicorn.conf.py."""

    def __init__(self, args: Sequence[str] = (), **settings: str) -> None:
        self.port = free_port()
        command = [*GUNICORN[:-1], *args, GUNICORN[-1]]  # options before the app
        super().__init__(command, server_env(HOST="127.0.0.1", PORT=str(self.port), **settings))

    def worker(self) -> int:
        """Return the process id of its one worker."""
        return proc_stats.only_child(self.process.pid, "gunicorn")

    def workers(self) -> list[int]:
        """Return the process ids of its workers (the master's gunicorn children)."""
        return [pid for pid in proc_stats.children(self.process.pid) if "gunicorn" in proc_stats.command_line(pid)]


@contextmanager
def serving(args: Sequence[str] = (), **settings: str) -> Iterator[Gunicorn]:
    """Run the production server for the block, then stop it gracefully (the worker stops what it started)."""
    server = Gunicorn(args, **settings)
    try:
        wait_until(lambda: answers_ping(f"http://127.0.0.1:{server.port}"), 120, "gunicorn to answer")
        yield server
        server.process.terminate()
        server.process.wait(150)
    finally:
        server.close()
