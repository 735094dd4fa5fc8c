"""Entry point of the Refinity API server.

`python app.py` serves on HOST:PORT (loopback unless HOST says otherwise) with Werkzeug's
threaded server; `python app.py --demo` does the same with simulated GPT and Stable
Diffusion backends, for a machine with no keys and no GPU (`--messy [--seed N]`: the GPT
simulator answers like a real model, decorated at times). Either way the logs are JSON
lines on stderr (core.logs) and what the server refuses itself is answered in the envelope
(core.serving), as under gunicorn (`gunicorn -c gunicorn.conf.py app:app`), for which the
module attribute `app` is built on first access, so importing this module starts nothing.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from werkzeug.serving import make_server

from config import from_env
from core import logs
from core.factory import close_app, create_app
from core.request_body import return_freed_bodies
from core.serving import EnvelopeRequestHandler

log = logging.getLogger("app")


def main(argv: list[str] | None = None) -> None:
    """Run the development server, optionally with simulated backends."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="start simulated GPT and SD backends too")
    parser.add_argument("--messy", action="store_true", help="with --demo: GPT answers like a real model")
    parser.add_argument("--seed", type=int, default=0, help="with --messy: the seed of its answers (default 0)")
    args = parser.parse_args(argv)
    if args.messy and not args.demo:
        parser.error("--messy needs --demo")
    logs.configure(from_env()["LOG_LEVEL"])  # first, so the store line and every warning are JSON too
    overrides = {}
    if args.demo:
        from simulators.chat import Realistic
        from simulators.demo import start_demo_backends

        overrides = start_demo_backends(realistic=Realistic(seed=args.seed) if args.messy else None)
    # SIGTERM (docker stop, systemd, kill) should end like Ctrl-C, through the `finally` that
    # stops the embedded store cleanly; Python's default would skip it and orphan the store.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    server = create_app(overrides)
    return_freed_bodies()  # so the process's memory follows BODY_MEMORY_BUDGET
    try:
        http = make_server(server.config["HOST"], server.config["PORT"], server, threaded=True,
                           request_handler=EnvelopeRequestHandler)
        log.info("serving on http://%s:%d", server.config["HOST"], http.server_port)
        http.serve_forever()  # until Ctrl-C or SIGTERM
    finally:
        close_app(server)


def __getattr__(name: str):
    # gunicorn asks for `app:app`; build it then, once, rather than at import.
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)


if __name__ == "__main__":
    main()
