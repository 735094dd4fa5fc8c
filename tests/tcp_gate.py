"""A loopback relay in front of a MongoDB-wire server, to catch or break a request mid-flight (a test double).

Put it between a server and its database. It relays whole wire messages, so it can tell
which command each one sends: `command_of(message)` reads, e.g., ("insert",
"session_history"). Tests steer it from outside, over the wire, never by patching code:

- `hold()` keeps what clients send instead of forwarding it, so each database call of the
  server waits; `held_with(b"participants")` counts connections whose held bytes name that
  collection; `open()` forwards every held byte, in order, and relays freely again.
  `hold_sender(marker)` holds one connection only: the next that sends `marker`, from that
  message on, until `open()`; the others relay as ever.
- `watch(marker)` notes which connections ever send `marker` (`sent_with`), e.g. to see how
  many pooled connections a client has warmed.
- `cut_before(command, collection)` makes the database go away when a client sends that
  command (None: any command) on that collection, before the database sees it;
  `cut_after(...)` once the database has answered it. Going away cuts every connection and
  closes new ones at once, like a dead server (`is_down`), until `mend()`.
- `refuse(command, collection, skip=n)` lets `n` such commands through, then answers the next
  one itself with a command error (`ok: 0`, a code and a message), as a database that
  refuses a write does (a full disk, a failed validation); the database never sees it.
- `count(command, collection)` says how many such commands clients have sent;
  `count_commands(names)` how many of those names, on any collection.
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import bson

OP_MSG = 2013  # the opcode of every command a modern driver sends
_HEADER = 16  # messageLength, requestID, responseTo, opCode: four little-endian int32


def command_of(message: bytes) -> tuple[str, Any]:
    """Return the command an OP_MSG sends and its value (the collection, for most), or ("", None)."""
    # After the header and the flag bits, section kind 0: the body, a BSON document.
    if len(message) < _HEADER + 10 or int.from_bytes(message[12:16], "little") != OP_MSG or message[20] != 0:
        return "", None
    size = int.from_bytes(message[21:25], "little")
    body = bson.decode(message[21:21 + size])
    return next(iter(body.items()), ("", None))


class _Link:
    """One client connection and its connection to the target."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client, self.server = client, server
        self.held = bytearray()  # bytes from the client read while the gate was held
        self.released = threading.Event()  # cleared while this link alone is held (hold_sender)
        self.released.set()
        self.markers: set[bytes] = set()  # markers ever seen in what the client sent
        self.cut_on_answer = False  # go down once the server answers this link's last message


class TcpGate:
    """Relay 127.0.0.1:<port> to `target`; use as a context manager."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._stopping = False
        self._down = False
        self._refusal: list[Any] | None = None  # [command, collection, still to let through, error]
        self._seen: dict[tuple[str, str | None], int] = {}
        self._cut: tuple[str, str | None, str] | None = None  # ("before" or "after", command, collection)
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self._watched: set[bytes] = set()
        self._hold_marker: bytes | None = None

    @property
    def uri(self) -> str:
        """The MongoDB URI that reaches the target through the gate."""
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> TcpGate:
        """Start accepting connections."""
        self._spawn(self._accept)
        return self

    def hold(self) -> None:
        """Keep what clients send from now on, instead of forwarding it."""
        self._open.clear()

    def hold_sender(self, marker: bytes) -> None:
        """Hold the connection that next sends a message containing `marker`, from that message on, until open()."""
        with self._lock:
            self._hold_marker = marker

    def open(self) -> None:
        """Forward everything held, then relay freely again."""
        with self._lock:  # under the lock, so no relay thread adds to `held` after the clear
            self._hold_marker = None
            for link in self._links:
                link.held.clear()
                link.released.set()
            self._open.set()

    def watch(self, marker: bytes) -> None:
        """Note from now on which connections send `marker`."""
        with self._lock:
            self._watched.add(marker)

    def held_with(self, marker: bytes) -> int:
        """Return how many connections have held bytes that contain `marker`."""
        with self._lock:
            return sum(marker in link.held for link in self._links)

    def sent_with(self, marker: bytes) -> int:
        """Return how many connections ever sent `marker` (a watched one)."""
        with self._lock:
            return sum(marker in link.markers for link in self._links)

    def cut_before(self, command: str | None, collection: str) -> None:
        """Go down when a client next sends `command` (None: any) on `collection`, not forwarding it."""
        with self._lock:
            self._cut = ("before", command, collection)

    def cut_after(self, command: str | None, collection: str) -> None:
        """Go down once the target has answered the next `command` (None: any) on `collection`."""
        with self._lock:
            self._cut = ("after", command, collection)

    def refuse(self, command: str, collection: str, *, skip: int = 0, code: int = 14031,
               errmsg: str = "database or disk is full") -> None:
        """Let `skip` `command`s on `collection` through, then answer the next one with a command error."""
        with self._lock:
            self._refusal = [command, collection, skip, {"ok": 0.0, "errmsg": errmsg, "code": code}]

    def count(self, command: str, collection: str) -> int:
        """Return how many `command`s on `collection` clients have sent through the gate."""
        with self._lock:
            return self._seen.get((command, collection), 0)

    def count_commands(self, names: set[str]) -> int:
        """Return how many commands named in `names` clients have sent through the gate, on any collection."""
        with self._lock:
            return sum(n for (command, _), n in self._seen.items() if command in names)

    @property
    def is_down(self) -> bool:
        """Whether the gate went down and has not been mended."""
        with self._lock:
            return self._down

    def mend(self) -> None:
        """Relay new connections again (the cut ones stay closed, as after a restart)."""
        with self._lock:
            self._down = False

    def stop(self) -> None:
        """Close every connection and join every thread."""
        self._stopping = True
        self._open.set()
        _close(self._listener)  # the shutdown wakes the accepting thread; a close alone may not
        with self._lock:
            links, self._links = list(self._links), []
        _close_links(links)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> TcpGate:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed: stop accepting
            if self.is_down:
                _close(client)  # at once, as a dead server's port would
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:  # the target is down: the same to the client
                _close(client)
                continue
            server.settimeout(None)
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            self._spawn(self._upstream, link)
            self._spawn(self._downstream, link)

    def _cut_at(self, name: str, value: Any) -> str | None:
        """Return "before" or "after" when command `name` on `value` is the armed cut's (disarming it), else None."""
        if self._cut is None:
            return None
        when, command, collection = self._cut
        if value != collection or command not in (None, name):
            return None
        self._cut = None
        return when

    def _refused(self, name: str, value: Any) -> dict[str, Any] | None:
        """Return the error to answer command `name` on `value` with when it is the armed refusal's, else None."""
        if self._refusal is None or self._refusal[:2] != [name, value]:
            return None
        if self._refusal[2] > 0:
            self._refusal[2] -= 1
            return None
        error, self._refusal = self._refusal[3], None
        return error

    def _upstream(self, link: _Link) -> None:
        """Relay client to server message by message, keeping them while the gate is held."""
        for message in _messages(link.client):
            with self._lock:
                if self._down:
                    break
                link.markers.update(marker for marker in self._watched if marker in message)
                name, value = command_of(message)
                counted = (name, value if isinstance(value, str) else None)  # a collection, or nothing to count by
                self._seen[counted] = self._seen.get(counted, 0) + 1
                refusal = self._refused(name, value)
            if refusal is not None:
                try:  # the driver waits for this answer and sends nothing else on the link meanwhile
                    link.client.sendall(_reply(message, refusal))
                except OSError:
                    break
                continue
            with self._lock:
                cut = self._cut_at(name, value)
                if cut == "before":
                    self._go_down()
                    break
                link.cut_on_answer = cut == "after"
                if self._hold_marker is not None and self._hold_marker in message:
                    self._hold_marker = None
                    link.released.clear()
                held = not self._open.is_set() or not link.released.is_set()
                if held:
                    link.held += message
            if held:
                self._open.wait()
                link.released.wait()
            try:
                link.server.sendall(message)
            except OSError:
                break
        _close_write(link.server)

    def _downstream(self, link: _Link) -> None:
        """Relay server to client message by message, going down after an answer a cut waits for."""
        for message in _messages(link.server):
            with self._lock:
                if self._down:
                    break
                cut = link.cut_on_answer
                if cut:  # down before the client reads the answer, so nothing it sends next gets through
                    self._down = True
            try:
                link.client.sendall(message)
            except OSError:
                break
            if cut:
                with self._lock:
                    self._go_down()
                break
        _close_write(link.client)

    def _go_down(self) -> None:
        """Cut every connection and refuse new ones (call with the lock held)."""
        self._down = True
        links, self._links = self._links, []
        _close_links(links)


def _reply(request: bytes, body: dict[str, Any]) -> bytes:
    """Return an OP_MSG answering `request` with the document `body`."""
    payload = (0).to_bytes(4, "little") + b"\x00" + bson.encode(body)  # no flag bits; section kind 0
    header = [_HEADER + len(payload), 0, int.from_bytes(request[4:8], "little"), OP_MSG]
    return b"".join(value.to_bytes(4, "little", signed=True) for value in header) + payload


def _messages(sock: socket.socket) -> Iterator[bytes]:
    """Yield whole wire messages (each starts with its int32 length) read from `sock` until it closes."""
    buffer = bytearray()
    while True:
        while len(buffer) >= 4:
            size = max(int.from_bytes(buffer[:4], "little"), 4)
            if len(buffer) < size:
                break
            yield bytes(buffer[:size])
            del buffer[:size]
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        buffer += data


def _close_links(links: list[_Link]) -> None:
    for link in links:
        link.released.set()  # a relay thread waiting to forward wakes up to find its sockets closed
        for sock in (link.client, link.server):
            _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _close_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
