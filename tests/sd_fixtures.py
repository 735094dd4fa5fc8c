"""Fixtures and helpers of the Stable Diffusion tests: simulators on free loopback ports."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.pool import SDInstancePool
from simulators.webui import SDWebUISimulator


@pytest.fixture
def sd_sims() -> Iterator[Callable[..., SDWebUISimulator]]:
    """Return a factory of started WebUI simulators; each is stopped after the test."""
    started: list[SDWebUISimulator] = []

    def make(**kwargs: Any) -> SDWebUISimulator:
        sim = SDWebUISimulator(**kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def sd_pools() -> Iterator[Callable[..., SDInstancePool]]:
    """Return a factory of pools with test-sized timeouts; each is closed after the test."""
    made: list[SDInstancePool] = []

    def make(endpoints: list[str], **kwargs: Any) -> SDInstancePool:
        settings = {"connect_timeout": 1.0, "read_timeout": 5.0, "acquire_timeout": 5.0,
                    "cooldown": 30.0, "max_attempts": 3, "probe_timeout": 1.0, **kwargs}
        pool = SDInstancePool(endpoints, **settings)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


def small_payload(prompt: str = "a folding chair", **fields: Any) -> dict[str, Any]:
    """Return a cheap txt2img payload (a tiny image, few steps)."""
    return {"prompt": prompt, "width": 16, "height": 8, "steps": 2, **fields}



class Worker(threading.Thread):
    """A thread that runs `target` and keeps its result or exception for the test to check."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._target_call = target
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._target_call()
        except BaseException as e:  # noqa: BLE001  (handed to the test)
            self.error = e

    def outcome(self, timeout: float = 10.0) -> Any:
        """Join and return the result, or raise what the thread raised."""
        self.join(timeout)
        assert not self.is_alive(), "worker still running"
        if self.error is not None:
            raise self.error
        return self.result
