"""Fixtures and helpers of the fault tests: faulty-backend apps, a private store, record checks.

`fault_app` is wired to the `sims` of tests.generate_fixtures with short cooldowns and read
timeouts; `own_store` is an nx-27017 of the test's own (fixed port, own data dir), which a
test may stop and start again without disturbing the session-wide store.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pymongo import MongoClient
from pymongo.database import Database

from apps.records import COLLECTION
from core.backends import get_pool
from core.embedded_store import EmbeddedStore, free_port
from simulators.webui import SDWebUISimulator
from tests.generate_fixtures import PROMPTS, body, decode_png
from tests.helpers import wait_until

# Small enough to see each fault quickly, large enough for a loaded 2-core machine.
FAULT_SETTINGS = {"SD_COOLDOWN": 0.3, "SD_READ_TIMEOUT": 1.5, "SD_ACQUIRE_TIMEOUT": 60.0,
                  "GPT_MAX_RETRIES": 2}
RAPID_TWO = {"task": PROMPTS[0]["task"], "num": 2}


@pytest.fixture
def fault_app(make_gen_app) -> Flask:
    """An app wired to the simulators with the fault settings, on a fresh database."""
    return make_gen_app(**FAULT_SETTINGS)


@pytest.fixture
def fault_client(fault_app: Flask) -> FlaskClient:
    """A test client of `fault_app`."""
    return fault_app.test_client()


@pytest.fixture
def fault_db(fault_app: Flask, mongo_uri: str) -> Iterator[Database]:
    """A separate pymongo handle on `fault_app`'s database."""
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=2000) as direct:
        yield direct[fault_app.config["MONGO_DB"]]


@pytest.fixture
def own_store(tmp_path) -> Iterator[EmbeddedStore]:
    """A store of this test only, on a fixed free port with its own data directory."""
    store = EmbeddedStore(tmp_path / "own-mongo", port=free_port()).start()
    yield store
    store.stop()


def direct_client(store: EmbeddedStore) -> MongoClient:
    """Return a separate client on `store`, to check what was really written (a context manager)."""
    return MongoClient(store.uri, serverSelectionTimeoutMS=3000)


def generate(client: FlaskClient, type_: int = 0, prompts: dict[str, Any] | None = None,
             username: str = "alice") -> tuple[int, dict[str, Any]]:
    """POST /generate and return (HTTP status, envelope)."""
    response = client.post("/generate", json=body(type_, RAPID_TWO if prompts is None else prompts, username))
    return response.status_code, response.get_json()


def check_rapid(answer: dict[str, Any], count: int) -> None:
    """Check a successful type 0 answer: `count` cards, each with a real PNG and a text."""
    assert answer["success"] is True and answer["code"] == 0, answer
    assert answer["data"]["count"] == len(answer["data"]["result"]) == count
    for creative in answer["data"]["result"]:
        image, text = creative["items"]
        decode_png(image["image"])
        assert text["text"]


def check_backend_failure(status: int, answer: dict[str, Any], step_prefix: str, http: int = 503) -> None:
    """Check a code 2 envelope whose message names a step starting with `step_prefix`."""
    assert status == http and answer["success"] is False and answer["code"] == 2, answer
    assert answer["data"] is None and answer["message"].startswith(step_prefix), answer["message"]


def all_records(db: Database) -> list[dict[str, Any]]:
    """Return the generation records of `db`, oldest first."""
    return list(db[COLLECTION].find({}).sort("createdAt", 1))


def image_steps(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the image step entries of a record."""
    return [step for step in record["steps"] if step["kind"] == "image"]


def instance_state(app: Flask, sim: SDWebUISimulator) -> dict[str, Any]:
    """Return the pool's view of one simulator."""
    with app.app_context():
        instances = get_pool().snapshot()["instances"]
    return next(i for i in instances if i["name"] == f"{sim.host}:{sim.port}")


def wait_cooldowns_over(app: Flask, timeout: float = 10.0) -> None:
    """Wait until no instance of the app's pool has cooldown time left (probes may then run)."""
    def over() -> bool:
        with app.app_context():
            return all(i["cooldown_remaining"] == 0 for i in get_pool().snapshot()["instances"])
    wait_until(over, timeout, "the cooldowns to end")


def timed(fn, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Return (seconds taken, result) of one call."""
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return time.monotonic() - started, result
