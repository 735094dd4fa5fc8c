"""Clients a study server meets on a bad day, for the benchmark and the load tests to drive it with.

- `SlowClients`: connections that send their request a byte at a time (slowloris), half of
  them the head, half the body after a whole head; each one the server cuts off is opened
  again, so that `count` stay open all along.
- `LargestSave` and `send_save`: a /paint/save of the largest size the server takes, sent as
  a careful uploader does (Expect: 100-continue, the body only once the server asks for it)
  and sent again after `Retry-After` while the server is busy.
- `Bystander`: a participant calling /ping and /paint/start in turn, each on a new connection,
  every answer timed.

`largest_saves` and `slow_clients` run the scenarios of bench/hostile_bench.py and of the
load tests (tests/test_hostile_clients.py) with them.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

from bench import proc_stats
from tests.helpers import save_body
from tests.raw_http import Connection, request_head

# -- slow clients ------------------------------------------------------------------------------
SLOW_BODY_LENGTH = 100_000


def _head_bytes() -> Iterator[bytes]:
    """Yield a head that never ends, a byte at a time."""
    start = b"POST /paint/start HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"
    for line in itertools.chain([start], itertools.repeat(b"X-Slow: 1\r\n")):
        yield from (line[i:i + 1] for i in range(len(line)))


def _body_bytes() -> Iterator[bytes]:
    """Yield a whole head at once, then a body that never ends, a byte at a time."""
    yield request_head("POST", "/paint/save", SLOW_BODY_LENGTH, Content_Type="application/json")
    yield from (b[i:i + 1] for b in itertools.repeat(b'{"username": "slow') for i in range(len(b)))


class SlowClients(threading.Thread):
    """Keep `count` connections open that send a byte every `interval` seconds; reopen the ones cut off."""

    def __init__(self, port: int, count: int, interval: float = 2.0) -> None:
        super().__init__(name="slow-clients", daemon=True)
        self.port, self.count, self.interval = port, count, interval
        self.opened = 0
        self.cut = 0  # connections the server answered (408) or closed
        self._selector = selectors.DefaultSelector()
        self._stop_event = threading.Event()

    def _open(self, kind: int) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setblocking(False)
        pieces = _head_bytes() if kind % 2 == 0 else _body_bytes()
        self._selector.register(sock, selectors.EVENT_READ, (kind, pieces))
        self.opened += 1
        self._send(sock, pieces)

    def _send(self, sock: socket.socket, pieces: Iterator[bytes]) -> bool:
        try:
            sock.send(next(pieces))  # at most a head: it fits an idle socket's buffer
            return True
        except OSError:
            return False

    def _reopen(self, sock: socket.socket, kind: int) -> None:
        self._selector.unregister(sock)
        sock.close()
        self.cut += 1
        if not self._stop_event.is_set():
            self._open(kind)

    def run(self) -> None:
        """Open the connections, then send each its next byte every `interval` seconds until stopped."""
        for kind in range(self.count):
            self._open(kind)
        while not self._stop_event.wait(self.interval):
            for key, _ in self._selector.select(0):  # the server answered or closed: it cut this one off
                self._reopen(key.fileobj, key.data[0])
            for key in list(self._selector.get_map().values()):
                if not self._send(key.fileobj, key.data[1]):
                    self._reopen(key.fileobj, key.data[0])

    def stop(self) -> None:
        """Stop sending and close every connection."""
        self._stop_event.set()
        self.join(30)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        self._selector.close()


# -- the largest saves ------------------------------------------------------------------------------
IMAGE_BYTES = 768 * 1024  # 1 MB as base64 in the data URI


class LargestSave:
    """A /paint/save body of exactly `size` bytes, many distinct schemes around one shared sketch.

    The schemes' bytes are built once and shared by every participant's body; only the
    username differs, so a client can send many of them at once without holding each.
    """

    def __init__(self, size: int) -> None:
        image = b"data:image/png;base64," + base64.b64encode(os.urandom(IMAGE_BYTES))
        marker = "@SCHEMES@"
        self._outline = json.dumps(save_body("{username}", rapid=[marker]), ensure_ascii=False)
        prefix, suffix = (part.encode() for part in self._outline.split(f'"{marker}"'))
        per_scheme = len(self._scheme(0, image, b"")) + 1
        count = (size - len(prefix) - len(suffix) - 64) // per_scheme
        parts = [self._scheme(i, image, b"") for i in range(count - 1)]
        room = size - len(prefix) - len(suffix) - sum(len(p) + 1 for p in parts) - len(self._scheme(count, image, b""))
        parts.append(self._scheme(count, image, b"x" * room))
        self.schemes = b",".join(parts)
        self.size, self.count = size, count

    @staticmethod
    def _scheme(index: int, image: bytes, pad: bytes) -> bytes:
        return b'{"name":"scheme %d","pad":"%s","canvasImage":"%s"}' % (index, pad, image)

    def parts(self, username: str) -> tuple[bytes, bytes, bytes]:
        """Return the body for `username` in three parts, the shared schemes in the middle."""
        prefix, suffix = (part.encode() for part in self._outline.replace("{username}", username)
                          .split('"@SCHEMES@"'))
        if len(prefix) + len(self.schemes) + len(suffix) != self.size:
            raise ValueError(f"username {username!r} must be as long as {{username}}")
        return prefix, self.schemes, suffix


@dataclass
class SaveOutcome:
    """How one participant's save went: answers 503 before it was stored, and the final answer."""

    busy: int = 0
    status: int = 0
    message: str = ""
    seconds: float = 0.0


def send_save(port: int, save: LargestSave, username: str, deadline: float) -> SaveOutcome:
    """Send `username`'s largest save until it is stored (or `deadline`), waiting Retry-After while busy."""
    outcome, started = SaveOutcome(), time.monotonic()
    while time.monotonic() < deadline:
        with Connection(port, timeout=300) as connection:
            connection.send(request_head("POST", "/paint/save", save.size, Content_Type="application/json",
                                         Expect="100-continue"))
            answer = connection.answer()
            if answer.status == 100:
                for part in save.parts(username):
                    connection.send(part)
                answer = connection.answer()
        outcome.status, outcome.message = answer.status, answer.envelope()["message"]
        if answer.status != 503:
            break
        outcome.busy += 1
        time.sleep(float(answer.headers.get("retry-after", 1)))
    outcome.seconds = time.monotonic() - started
    return outcome


# -- a bystander ------------------------------------------------------------------------------------
class Bystander(threading.Thread):
    """Call /ping and /paint/start in turn, each on a new connection, until stopped; time every answer."""

    def __init__(self, port: int, username: str = "bystander", pause: float = 0.2, timeout: float = 30.0) -> None:
        super().__init__(name="bystander", daemon=True)
        self.port, self.username, self.pause, self.timeout = port, username, pause, timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop_event = threading.Event()

    def _call(self, index: int) -> bool:
        base = f"http://127.0.0.1:{self.port}"
        if index % 2 == 0:
            response = requests.get(base + "/ping", timeout=self.timeout)
            return response.text == "pong"
        response = requests.post(base + "/paint/start", json={"username": self.username}, timeout=self.timeout)
        return response.json()["success"] is True

    def run(self) -> None:
        """Call until stopped."""
        for index in itertools.count():
            if self._stop_event.wait(self.pause):
                return
            started = time.monotonic()
            try:
                ok = self._call(index)
            except (requests.RequestException, ValueError) as error:
                self.failures.append(type(error).__name__)
                continue
            self.latencies.append(time.monotonic() - started)
            if not ok:
                self.failures.append("a wrong answer")

    def stop(self) -> None:
        """Stop after the call in progress."""
        self._stop_event.set()
        self.join(self.timeout + 5)


# -- the scenarios, for the benchmark and the load tests ---------------------------------------------
@dataclass
class SavesRun:
    """What `largest_saves` saw: each save's outcome, the worker's memory in KiB, the time, the bystander."""

    outcomes: list[SaveOutcome]
    start_kb: int
    peak_kb: int
    seconds: float
    bystander: Bystander


def largest_saves(server, count: int, size: int, limit: float, bystander_timeout: float = 30.0) -> SavesRun:
    """Have `count` participants send a `size` save to `server` (a tests.production_server.Gunicorn) at once."""
    save, port = LargestSave(size), server.port
    names = [f"saver-{i:04d}" for i in range(count)]
    for name in names:
        requests.post(f"http://127.0.0.1:{port}/paint/start", json={"username": name}, timeout=30).raise_for_status()
    worker = server.worker()
    start_kb = proc_stats.memory_kb(worker)[0]
    sampler = proc_stats.Sampler({"worker": worker}, interval=0.05).start()
    bystander = Bystander(port, timeout=bystander_timeout)
    bystander.start()
    began = time.monotonic()
    try:
        with ThreadPoolExecutor(count) as pool:
            outcomes = list(pool.map(lambda name: send_save(port, save, name, began + limit), names))
    finally:
        seconds = time.monotonic() - began
        bystander.stop()
        peak_kb = sampler.stop()["worker"].peak_rss_kb
    return SavesRun(outcomes, start_kb, peak_kb, seconds, bystander)


def slow_clients(port: int, count: int, seconds: float, until: Callable[[SlowClients], bool] | None = None,
                 bystander_timeout: float = 30.0) -> tuple[SlowClients, Bystander]:
    """Open `count` slow connections, then have a bystander call for `seconds` (or until `until(slow)`)."""
    slow = SlowClients(port, count)
    slow.start()
    opening = time.monotonic() + 60
    while slow.opened < count and time.monotonic() < opening:
        time.sleep(0.1)
    bystander = Bystander(port, timeout=bystander_timeout)
    bystander.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until(slow)):
        time.sleep(0.1)
    bystander.stop()
    slow.stop()
    return slow, bystander
