"""A test double of Azure OpenAI / OpenAI chat completions: a real HTTP server, no model.

Routes (anything else is 404):
- Azure: `POST /openai/deployments/{deployment}/chat/completions?api-version=...` with the
  `api-key` header; a missing api-version is 400, as on Azure.
- OpenAI: `POST /v1/chat/completions` with `Authorization: Bearer <key>`; the body names the model.
A wrong or missing key is 401; a malformed body or an image part that is not base64 is 400.
Errors carry an OpenAI-style body `{"error": {"message", "type", "code"}}`.

The answer contract (what our prompt templates follow). "The prompt" is the text of the last
user message (its text parts joined by newlines):
- The number of items asked for is written as `共 N 项`; the last occurrence wins; absent means 1.
- A line `候选：A#B#C` (`:` or `：`, `#` or `＃`) makes the items a pick of those candidates:
  fixed by the prompt's hash, no repeats, at most as many as there are candidates.
- Otherwise items are short fake Chinese phrases derived from the prompt's hash and the item
  index, or English comma-separated keywords when the prompt contains `英文` or `English`.
  Items of one answer always differ.
- Items are joined by `#`: no numbering, no trailing separator.

`requests` records every request to a chat route (with the status answered, before the
client gets it); `calls` counts every POST. Valid requests pass the fault switches in order: `fail_next` (answer an error
status with `Retry-After` and `retry-after-ms`, which the SDK honours), `hang_next` (hold
until `release()`, `hang_timeout` or `stop()`), the latency, and `short_next` / `messy`
(which change the answer). Run standalone with
`python -m simulators.openai_chat --port 8001 --latency 0.15 --api-key sim-key`.
"""
from __future__ import annotations

import argparse
import logging
import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any

from simulators.chat_handler import ChatHandler
from simulators.chat_messages import ChatRecord
from simulators.chat_state import ChatState
from simulators.http import serve_until_stopped

__all__ = ["ChatRecord", "ChatSimulator", "main"]

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    """The HTTP server; handler threads are joined on close so nothing outlives `stop()`."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, sim: ChatSimulator, address: tuple[str, int]) -> None:
        self.sim = sim
        super().__init__(address, ChatHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log handler failures quietly: a client that hung up is normal here."""
        log.debug("chat simulator: connection from %s failed", client_address, exc_info=True)


class ChatSimulator(ChatState):
    """A chat-completions server for tests, benchmarks and the offline demo (never a real study).

    Besides the switches of `ChatState` (fail_next, short_next, hang_next, release, latency,
    messy) it keeps `requests` (a `ChatRecord` per request to a chat route), `calls`,
    `in_flight`, `peak_in_flight` and `held`.
    """

    def __init__(self, api_key: str = "sim-key", latency: float = 0.0, host: str = "127.0.0.1",
                 port: int = 0, hang_timeout: float = 30.0, daemon: bool = False) -> None:
        super().__init__(latency=latency, hang_timeout=hang_timeout)
        self.api_key = api_key
        # Tests want every connection thread joined in stop(); a demo process must not wait
        # at exit for idle keep-alive connections, so it asks for daemon threads instead.
        self.daemon = daemon
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()

    @property
    def url(self) -> str:
        """Return the base URL, e.g. `http://127.0.0.1:54321` (no trailing slash)."""
        assert self._server is not None, "start() the simulator first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ChatSimulator:
        """Start serving on a background thread and return self."""
        self._stopping.clear()
        self._server = _Server(self, self._address)
        self._server.daemon_threads = self.daemon
        # A short poll interval keeps stop() fast; the loop is idle otherwise.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="chat-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release held calls, close open connections and join every server thread."""
        if self._server is None:
            return
        self._wake_all()
        self._server.shutdown()  # no new connections from here on
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:  # idle keep-alive connections would block the join below
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        assert self._thread is not None
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> ChatSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _enter(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _leave(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)


def main(argv: list[str] | None = None) -> None:
    """Run the simulator in the foreground until interrupted."""
    parser = argparse.ArgumentParser(description="Chat-completions simulator (test double).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per call")
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--messy", action="store_true", help="decorate answers like a chatty model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sim = ChatSimulator(api_key=args.api_key, latency=args.latency, host=args.host, port=args.port)
    sim.messy = args.messy
    sim.start()
    log.info("chat simulator at %s; point the server at it with AZURE_OPENAI_ENDPOINT=%s "
             "AZURE_OPENAI_API_KEY=<the --api-key value> (or OPENAI_BASE_URL=%s/v1 "
             "OPENAI_API_KEY=<the --api-key value>)", sim.url, sim.url, sim.url)
    serve_until_stopped(sim.stop)


if __name__ == "__main__":
    main()
