"""Running a simulator as a standalone process (`python -m simulators.sd_webui`, ...)."""
from __future__ import annotations

import signal
import threading
from typing import Protocol


class Stoppable(Protocol):
    """A started simulator."""

    def stop(self) -> None:
        """Stop serving."""


def serve_until_stopped(sim: Stoppable) -> None:
    """Block until Ctrl-C or SIGTERM (as process managers send it), then stop `sim` cleanly."""
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
