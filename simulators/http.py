"""The HTTP server both simulators run on: threaded stdlib HTTP on a loopback port, JSON out.

`serve()` binds a `ThreadingHTTPServer` and hands every GET and POST, as a `Request`, to a
route function that returns a `Reply`: a status and a body sent as JSON (bytes go out as
they are, so tests can send broken bodies), or `DROP` to close the connection unanswered, the
way a crashing server does. A route may block (a stalled backend) on its handler thread.
`Listener.close()` stops accepting (connections are then refused) and ends idle kept-alive
connections, while requests already inside finish; `join()` waits for them.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import parse_qs

log = logging.getLogger(__name__)


class Request(NamedTuple):
    """One request as a route sees it."""

    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: Message
    body: bytes


class Reply(NamedTuple):
    """What a route answers: a status (None: drop the connection), a body and extra headers."""

    status: int | None
    body: Any = None
    headers: Mapping[str, str] = MappingProxyType({})


DROP = Reply(None)
Route = Callable[[Request], Reply]


class _Server(ThreadingHTTPServer):
    # block_on_close (the default) lets server_close() join the handler threads, and
    # daemon threads never keep a process alive that was asked to exit.
    daemon_threads = True

    def __init__(self, address: tuple[str, int], route: Route, name: str, keep_alive: bool) -> None:
        super().__init__(address, _Handler)
        self.route, self.name, self.keep_alive = route, name, keep_alive
        self.idle: set[socket.socket] = set()  # kept-alive connections waiting for a request
        self.closing = False
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log handler failures quietly: a client that hung up is normal here."""
        log.debug("%s: connection from %s failed", self.name, client_address, exc_info=True)

    def end_idle_connections(self) -> None:
        """Make every idle kept-alive connection read end-of-file, so its thread ends."""
        with self.lock:
            self.closing = True
            idle = list(self.idle)
        for sock in idle:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # a silent client cannot pin a handler thread for ever
    # Headers and body go out in separate writes; with Nagle on, a reused connection
    # waits ~40 ms for the client's delayed ACK before the body, on every call.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.protocol_version = "HTTP/1.1" if self.server.keep_alive else "HTTP/1.0"

    def version_string(self) -> str:
        return self.server.name

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.server.name, *args)

    def handle(self) -> None:
        """Answer requests on this connection until the client, or a closing server, ends it."""
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection and self._next_request_waiting():
            self.handle_one_request()

    def _next_request_waiting(self) -> bool:
        """Wait, idle, for the next request on a kept-alive connection; False when none comes."""
        with self.server.lock:
            if self.server.closing:
                return False
            self.server.idle.add(self.connection)
        try:
            return bool(self.rfile.peek(1))
        except OSError:  # the client's silence ran out the timeout, or it reset
            return False
        finally:
            with self.server.lock:
                self.server.idle.discard(self.connection)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.server.route(Request(self.command, path, parse_qs(query), self.headers, body))
        if reply.status is None:
            self.close_connection = True
            return
        raw = isinstance(reply.body, bytes)
        data = reply.body if raw else json.dumps(reply.body, ensure_ascii=False).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "text/plain" if raw else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("%s: the client left before the reply", self.server.name)
            self.close_connection = True


class Listener:
    """One bound server socket, the thread accepting on it and the threads answering."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self.host: str = server.server_address[0]
        self.port: int = server.server_address[1]
        # A short poll interval keeps close() fast; the loop is idle otherwise.
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{server.name}-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Return the base URL, e.g. `http://127.0.0.1:54321` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        """Stop accepting and close the listening socket; requests already inside go on."""
        self._server.shutdown()
        self._server.socket.close()
        self._server.end_idle_connections()

    def join(self) -> None:
        """Wait for the accept thread and every request thread to end."""
        self._thread.join()
        self._server.server_close()


def serve(route: Route, name: str, host: str = "127.0.0.1", port: int = 0,
          keep_alive: bool = False) -> Listener:
    """Bind `host:port` (0: a free port) and answer requests with `route` on threads.

    `name` goes in the Server header and the debug log; `keep_alive` keeps HTTP/1.1
    connections open between requests, otherwise a connection carries one request.
    """
    return Listener(_Server((host, port), route, name, keep_alive))


def command_line(description: str, port: int, latency_help: str) -> argparse.ArgumentParser:
    """Return a parser of the options every standalone simulator takes: host, port, latency."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port, help="0: any free port")
    parser.add_argument("--latency", type=float, default=0.0, help=latency_help)
    return parser


def serve_until_stopped(stop: Callable[[], None], announcement: str, *args: Any) -> None:
    """Log `announcement`, block until Ctrl-C or SIGTERM (as process managers send), then `stop`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    log.info(announcement, *args)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop()
