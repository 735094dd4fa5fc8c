"""Fixtures of the /generate and /generations tests: an app wired to simulated backends.

`sims` runs one chat-completions simulator and three WebUI simulators on loopback;
`gen_app` is an app on a fresh database pointed at them, with its backends closed after
the test. Request bodies are built in the web client's shape.
"""
from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from pymongo import MongoClient
from pymongo.database import Database

from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator
from tests.helpers import PNG_1PX

SIM_KEY = "generate-sim-key"
SKETCH = f"data:image/png;base64,{PNG_1PX}"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Sims:
    """The simulated backends of one test."""

    chat: ChatSimulator
    sds: list[SDWebUISimulator]


@pytest.fixture
def sims() -> Iterator[Sims]:
    """Run a chat simulator and three SD WebUI simulators for one test."""
    chat = ChatSimulator(api_key=SIM_KEY, hang_timeout=10.0).start()
    sds = [SDWebUISimulator().start() for _ in range(3)]
    yield Sims(chat, sds)
    for sd in sds:
        sd.stop()
    chat.stop()


def backend_settings(sims: Sims, **extra: Any) -> dict[str, Any]:
    """Return app settings pointing at `sims`, with test-sized timeouts and retries."""
    return {
        "AZURE_OPENAI_ENDPOINT": sims.chat.url,
        "AZURE_OPENAI_API_KEY": SIM_KEY,
        "GPT_TIMEOUT": 10.0,
        "GPT_MAX_RETRIES": 1,
        "SD_ENDPOINTS": [sd.endpoint for sd in sims.sds],
        "SD_CONNECT_TIMEOUT": 1.0,
        "SD_READ_TIMEOUT": 10.0,
        "SD_ACQUIRE_TIMEOUT": 10.0,
        "SD_COOLDOWN": 30.0,
        **extra,
    }


@pytest.fixture
def make_gen_app(make_app, sims: Sims) -> Callable[..., Flask]:
    """Return a factory of apps wired to `sims` (make_app closes their backends after the test)."""

    def make(**extra: Any) -> Flask:
        return make_app(**backend_settings(sims, **extra))

    return make


@pytest.fixture
def gen_app(make_gen_app) -> Flask:
    """An app wired to the simulators, on a fresh database."""
    return make_gen_app()


@pytest.fixture
def gen_client(gen_app: Flask):
    """A test client of `gen_app`."""
    return gen_app.test_client()


@pytest.fixture
def gen_db(gen_app: Flask, mongo_uri: str) -> Iterator[Database]:
    """A separate pymongo handle on `gen_app`'s database, to check what was really written."""
    direct = MongoClient(mongo_uri, serverSelectionTimeoutMS=2000)
    yield direct[gen_app.config["MONGO_DB"]]
    direct.close()


def body(type_: int, prompts: dict[str, Any], username: str | None = "alice", appid: Any = 0) -> dict[str, Any]:
    """Return a POST /generate body (without username when it is None)."""
    sent = {"appid": appid, "type": type_, "prompts": prompts}
    if username is not None:
        sent["username"] = username
    return sent


# The client's prompts for each type, as API-CONTRACT.md shows them.
PROMPTS: dict[int, dict[str, Any]] = {
    0: {"task": "设计一款运动辅助产品", "num": 6},
    1: {"designTask": "设计一款运动辅助产品", "designTexts": ["可折叠", "带计数"],
        "designImage": SKETCH, "schemeId": 2},
    2: {"designTask": "设计一款运动辅助产品", "selectNum": 2,
        "schemes": [{"designTexts": ["可折叠"], "designImage": SKETCH},
                    {"designTexts": ["带计数"], "designImage": SKETCH},
                    {"designTexts": ["发光"], "designImage": SKETCH}]},
    3: {"selectedSchemes": [{"designTexts": ["可折叠", "带计数"]}], "num": 3},
}


def decode_png(value: Any) -> bytes:
    """Return the bytes of a raw base64 PNG (no data: prefix), failing the test otherwise."""
    assert isinstance(value, str) and not value.startswith("data:")
    data = base64.b64decode(value, validate=True)
    assert data.startswith(PNG_SIGNATURE)
    return data
