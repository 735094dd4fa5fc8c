"""A loopback TCP relay that can hold what clients send, to catch a request mid-flight (a test double).

Put it between a server and its database: while `hold()` is on, bytes from clients are
read and kept instead of forwarded, so each database call of the server waits; a test sees
which calls are waiting (`held_with(b"participants")` counts connections whose held bytes
name that collection), does what it must while they are in flight, then `open()`s the
gate and every held byte goes on, in order. `watch(marker)` counts connections that ever
sent `marker` (`sent_with`), e.g. to see how many pooled connections a client has warmed.
"""
from __future__ import annotations

import socket
import threading


class _Link:
    """One client connection and its connection to the target."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client, self.server = client, server
        self.held = bytearray()  # bytes from the client read while the gate was held
        self.markers: set[bytes] = set()  # markers ever seen in what the client sent


class TcpGate:
    """Relay 127.0.0.1:<port> to `target`; use as a context manager."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._stopping = False
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self._watched: set[bytes] = set()

    def start(self) -> TcpGate:
        """Start accepting connections."""
        self._spawn(self._accept)
        return self

    def hold(self) -> None:
        """Keep what clients send from now on, instead of forwarding it."""
        self._open.clear()

    def open(self) -> None:
        """Forward everything held, then relay freely again."""
        with self._lock:  # under the lock, so no relay thread adds to `held` after the clear
            for link in self._links:
                link.held.clear()
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

    def stop(self) -> None:
        """Close every connection and join every thread."""
        self._stopping = True
        self._open.set()
        self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            for sock in (link.client, link.server):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
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
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                return  # the listener was closed (or the target is gone): stop accepting
            server.settimeout(None)
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            self._spawn(self._upstream, link)
            self._spawn(self._pipe, server, client)

    def _upstream(self, link: _Link) -> None:
        """Relay client to server, keeping the bytes while the gate is held."""
        while True:
            try:
                data = link.client.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            with self._lock:
                link.markers.update(marker for marker in self._watched if marker in data)
                held = not self._open.is_set()
                if held:
                    link.held += data
            if held:
                self._open.wait()
            try:
                link.server.sendall(data)
            except OSError:
                break
        _close_write(link.server)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        """Relay server to client as it comes."""
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not data:
                break
            try:
                sink.sendall(data)
            except OSError:
                break
        _close_write(sink)


def _close_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
