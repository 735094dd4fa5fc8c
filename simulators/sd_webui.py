"""A stand-in for an AUTOMATIC1111 Stable Diffusion WebUI started with `--api` (a test double).

A real HTTP server that answers the API routes the server uses, draws cheap PNGs instead of
running a model, and runs one generation at a time, as the WebUI's queue does (the
behaviour is `simulators.sd_api.WebUIBackend`). Tests and benchmarks read what it did
(`jobs`, `max_concurrency`, `max_in_flight`, `pings`) and inject faults at runtime:
`fail`, `hang`/`release`, `die_after`, `refuse`/`revive`, `heal`. A job still running
when the instance dies (`die_after(0)` during a held or slow job) gets no answer.
Run it alone with `python -m simulators.sd_webui --port 7864 --latency 0.5`.
"""
from __future__ import annotations

import argparse
import logging
import threading
from urllib.parse import quote

from simulators.sd_api import Job, WebUIBackend  # noqa: F401  (Job re-exported)
from simulators.foreground import serve_until_stopped
from simulators.sd_server import Listener, serve

log = logging.getLogger(__name__)


class SDWebUISimulator(WebUIBackend):
    """Serve the WebUI API on `host:port` (0: a free port) with simulated latency and faults."""

    def __init__(self, latency: float = 0.0, per_step: float | None = None,
                 auth: str | tuple[str, str] | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(latency, per_step, auth)
        self.host, self.port = host, port
        self._control = threading.Lock()  # the listening socket
        self._listener: Listener | None = None
        self._closed: list[Listener] = []

    def start(self) -> SDWebUISimulator:
        """Start listening; return self."""
        self.revive()
        return self

    def stop(self) -> None:
        """Stop listening, let held jobs finish, and join every server thread."""
        self.release()
        with self._control:
            self._close_listener()
            closed, self._closed = self._closed, []
        for listener in closed:
            listener.join()

    def __enter__(self) -> SDWebUISimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Return the base URL, without credentials."""
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """Return the URL to put in SD_ENDPOINTS (with `user:pass@` when auth is on)."""
        if not self._auth:
            return self.url
        user, password = (quote(part, safe="") for part in self._auth)
        return f"http://{user}:{password}@{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        """Return whether connections are accepted."""
        return self._listener is not None

    def refuse(self) -> None:
        """Close the listening socket now, so new connections are refused."""
        with self._control:
            self._close_listener()

    def revive(self) -> None:
        """Listen again on the same port (requests are no longer dropped after a die)."""
        with self._state:
            self._dead = False
        with self._control:
            if self._listener is None:
                self._listener = serve(self.host, self.port, self.route)
                self.port = self._listener.port

    def heal(self) -> None:
        """Clear every fault and listen again."""
        self.clear_faults()
        self.revive()

    def _stop_listening(self) -> None:
        self.refuse()

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._closed.append(self._listener)
            self._listener = None


def main(argv: list[str] | None = None) -> None:
    """Run one simulator until interrupted."""
    parser = argparse.ArgumentParser(description="Simulated AUTOMATIC1111 WebUI API (a test double).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per job")
    parser.add_argument("--per-step", type=float, default=None, help="seconds per sampling step, added")
    parser.add_argument("--auth", metavar="USER:PASS", help="require HTTP basic auth on /sdapi")
    parser.add_argument("--fail", type=int, metavar="N", help="answer 500 to the next N jobs (-1: all)")
    parser.add_argument("--die-after", type=int, metavar="N", help="stop listening after N jobs")
    parser.add_argument("--hang", action="store_true", help="hold every job until the process ends")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sim = SDWebUISimulator(args.latency, args.per_step, args.auth, args.host, args.port)
    if args.fail is not None:
        sim.fail(args.fail)
    if args.die_after is not None:
        sim.die_after(args.die_after)
    if args.hang:
        sim.hang()
    sim.start()
    log.info("SD WebUI simulator listening on %s%s", sim.url, " (basic auth on /sdapi)" if args.auth else "")
    serve_until_stopped(sim)


if __name__ == "__main__":
    main()
