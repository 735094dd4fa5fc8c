"""The HTTP plumbing of the simulated Stable Diffusion WebUI (a test double).

`serve()` binds a threaded stdlib HTTP server and hands every request to a route function
`(method, path, authorization, body) -> (status, json_body)` (bytes are sent as they are);
a status of None drops the connection unanswered, the way a crashing WebUI would. `Listener.close()` stops accepting
(connections are then refused) while requests already inside finish; `join()` waits for them.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

Reply = tuple[int | None, Any]
Route = Callable[[str, str, "str | None", bytes], Reply]


class _Server(ThreadingHTTPServer):
    # block_on_close (the default) lets server_close() join the handler threads, and
    # daemon threads never keep a process alive that was asked to exit.
    daemon_threads = True
    route: Route

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("simulator connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "SDWebUISimulator/1.0"
    timeout = 30  # a silent client cannot pin a handler thread for ever
    disable_nagle_algorithm = True  # headers and body go out as two writes: don't hold the second

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sd simulator: " + format, *args)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        status, reply = self.server.route(method, path, self.headers.get("Authorization"), body)
        if status is None:
            self.close_connection = True
            return
        raw = isinstance(reply, bytes)  # bytes go out as they are: lets tests send broken bodies
        data = reply if raw else json.dumps(reply).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if raw else "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="sdapi"')
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("sd simulator: the client left before the reply")


class Listener:
    """One bound server socket and the thread accepting on it."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"sd-simulator-{self.port}", daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and close the listening socket; open requests go on."""
        self._server.shutdown()
        self._server.socket.close()

    def join(self) -> None:
        """Wait for the accept thread and every request thread to end."""
        self._thread.join()
        self._server.server_close()


def serve(host: str, port: int, route: Route) -> Listener:
    """Bind `host:port` (0: any free port) and answer requests with `route` on threads."""
    server = _Server((host, port), _Handler)
    server.route = route
    return Listener(server)
