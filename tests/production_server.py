"""The production server (`gunicorn -c gunicorn.conf.py app:app`) on a free loopback port, for a block of a test or a benchmark."""
from __future__ import annotations

import http.client
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

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
        """Return the process ids of its workers (the master's gunicorn children), in order."""
        return sorted(pid for pid in proc_stats.children(self.process.pid)
                      if "gunicorn" in proc_stats.command_line(pid))

    def connections_of(self, workers: list[int], sd_ports: set[int]) -> tuple[dict[int, int], dict[int, int]]:
        """Return the worker holding each client connection (by client port) and each WebUI request (by WebUI port).

        Read from /proc: the established TCP connections, and the sockets in each worker's fd table.
        """
        owners = _socket_owners(workers)
        clients, images = {}, {}
        for local, remote, inode in _tcp_connections():
            if inode not in owners:
                continue
            if local == self.port:
                clients[remote] = owners[inode]
            elif remote in sd_ports:
                images[remote] = owners[inode]
        return clients, images

    def connections_to_each(self, workers: list[int], each: int) -> list[tuple[http.client.HTTPConnection, int]]:
        """Open connections one at a time until every worker has accepted `each`; return them with their worker, in turn.

        A burst of connections at once goes mostly to whichever worker's loop runs first, so the
        spread is made: each connection waits until some worker accepted it, and those beyond
        `each` for their worker are closed unused (a connection that sent nothing is harmless).
        """
        kept: dict[int, list[http.client.HTTPConnection]] = {pid: [] for pid in workers}
        for _ in range(50 * each * len(workers)):
            if all(len(held) >= each for held in kept.values()):
                break
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            connection.connect()
            mine = connection.sock.getsockname()[1]
            owner = wait_until(lambda: self.connections_of(workers, set())[0].get(mine), 5, "a worker to accept")
            if len(kept[owner]) < each:
                kept[owner].append(connection)
            else:
                connection.close()
        assert all(len(held) >= each for held in kept.values()), f"gunicorn's workers took {kept}"
        return [(held[i], pid) for i in range(each) for pid, held in kept.items()]


def _socket_owners(pids: list[int]) -> dict[int, int]:
    """Return the pid owning each socket inode of `pids` (their fd tables)."""
    owners = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owners[int(target[8:-1])] = pid
    return owners


def _tcp_connections() -> list[tuple[int, int, int]]:
    """Return (local port, remote port, inode) of every established IPv4 TCP connection on this machine."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01":  # ESTABLISHED
            found.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16), int(fields[9])))
    return found


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
