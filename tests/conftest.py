"""Fixtures shared by the suite: the database, apps, simulated backends and clients of them.

- The database is nx-27017 started once per test session on a free loopback port; every
  app gets a database of its own name, so tests never see each other's data.
  `make_app`/`app`/`client` build apps on it, `database_of(app)`/`db` open a separate
  pymongo handle to check what was really written. `paint` is the generation pipelines
  alone, on the real settings/ directory.
- `chat_sim` is a chat-completions simulator, `sd_sims` starts WebUI simulators, `sims` is
  one of the first and three of the second; `make_gpt` and `sd_pools` build clients of them.
- `make_gen_app`/`gen_app`/`gen_client`/`gen_db`: an app wired to `sims`.
Every fixture stops or closes what it started after the test.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pymongo import MongoClient
from pymongo.database import Database

from agent.gpt import GPTClient
from agent.pool import SDInstancePool
from apps.paint.pipelines import PaintApp
from config import from_env
from core.embedded_store import EmbeddedStore
from core.factory import close_app, create_app
from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator
from tests.helpers import API_VERSION, SIM_KEY, Sims, backend_settings
from tests.tcp_gate import TcpGate


# -- the database and apps on it ---------------------------------------------------------
@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory) -> Iterator[str]:
    """Start the wire-compatible server for the whole session and return its URI."""
    store = EmbeddedStore(tmp_path_factory.mktemp("mongo")).start()
    yield store.uri
    store.stop()


@pytest.fixture
def make_app(mongo_uri: str, tmp_path) -> Iterator[Callable[..., Flask]]:
    """Return a factory of apps on a fresh database, closing their backends after the test."""
    made: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        settings = {
            "TESTING": True,
            "MONGO_URI": mongo_uri,
            "MONGO_DB": f"test_{uuid.uuid4().hex[:12]}",
            "MONGO_TIMEOUT_MS": 2000,
            "DATA_DIR": str(tmp_path / "var"),
            **overrides,
        }
        app = create_app(settings, env={})
        made.append(app)
        return app

    yield make
    for app in made:
        close_app(app)


@pytest.fixture
def app(make_app) -> Flask:
    """An app on a fresh database with default settings."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of `app`."""
    return app.test_client()


@pytest.fixture
def database_of() -> Iterator[Callable[[Flask], Database]]:
    """Return `database_of(app)`: a separate pymongo handle on the app's database, closed after the test."""
    opened: list[MongoClient] = []

    def open_(app: Flask) -> Database:
        direct = MongoClient(app.config["MONGO_URI"], serverSelectionTimeoutMS=3000)
        opened.append(direct)
        return direct[app.config["MONGO_DB"]]

    yield open_
    for direct in opened:
        direct.close()


@pytest.fixture
def wire_gate(mongo_uri: str) -> Iterator[TcpGate]:
    """A relay in front of the session's database, to break its traffic from outside."""
    address = urlsplit(mongo_uri)
    with TcpGate((address.hostname, address.port)) as gate:
        yield gate


@pytest.fixture
def gated_app(make_app, wire_gate: TcpGate) -> Flask:
    """An app on a fresh database that it reaches through `wire_gate`."""
    return make_app(MONGO_URI=wire_gate.uri)


@pytest.fixture
def db(app: Flask, database_of) -> Database:
    """A separate pymongo handle on `app`'s database, to check what was really written."""
    return database_of(app)


@pytest.fixture(scope="session")
def paint() -> PaintApp:
    """The paint app on the real settings/ directory (checked once per session), without Flask."""
    return PaintApp()


# -- simulated backends and clients of them -------------------------------------------------
@pytest.fixture
def chat_sim() -> Iterator[ChatSimulator]:
    """Run a chat simulator on a free loopback port for one test."""
    with ChatSimulator(api_key=SIM_KEY, hang_timeout=10.0) as sim:
        yield sim


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
def sims(chat_sim: ChatSimulator, sd_sims) -> Sims:
    """A chat simulator and three SD WebUI simulators for one test."""
    return Sims(chat_sim, [sd_sims() for _ in range(3)])


@pytest.fixture
def make_gpt(chat_sim: ChatSimulator) -> Iterator[Callable[..., GPTClient]]:
    """Return a factory of GPT clients on `chat_sim` ("azure" or "openai"), closed after the test."""
    made: list[GPTClient] = []

    def make(provider: str = "azure", **settings: Any) -> GPTClient:
        if provider == "azure":
            env = {"AZURE_OPENAI_ENDPOINT": chat_sim.url, "AZURE_OPENAI_API_KEY": SIM_KEY,
                   "AZURE_OPENAI_API_VERSION": API_VERSION}
        else:
            env = {"OPENAI_API_KEY": SIM_KEY, "OPENAI_BASE_URL": f"{chat_sim.url}/v1"}
        env.update({"GPT_TIMEOUT": "5", "GPT_MAX_RETRIES": "0"})
        env.update({name: str(value) for name, value in settings.items()})
        client = GPTClient.from_config(from_env(env))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


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


# -- apps wired to the simulated backends ---------------------------------------------------
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
def gen_client(gen_app: Flask) -> FlaskClient:
    """A test client of `gen_app`."""
    return gen_app.test_client()


@pytest.fixture
def gen_db(gen_app: Flask, database_of) -> Database:
    """A separate pymongo handle on `gen_app`'s database, to check what was really written."""
    return database_of(gen_app)
