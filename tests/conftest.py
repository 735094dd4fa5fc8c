"""Fixtures shared by the suite: the database, apps, simulated backends and clients of them.

- The database is nx-27017 started once per test session on a free loopback port; every
  app gets a database of its own name, so tests never see each other's data.
  `make_app`/`app`/`client` build apps on it, `database_of(app)`/`db` open a separate
  pymongo handle to check what was really written. `paint` is the generation pipelines
  alone, on the real settings/ directory.
- `chat_sim` is a chat-completions simulator, `sd_sims` starts WebUI simulators, `sims` is
  one of the first and three of the second; `make_gpt` and `sd_pools` build clients of them.
- `make_gen_app`/`gen_app`/`gen_client`/`gen_db`: an app wired to `sims`.
- `redis_url` is a real redis-server started once per session; `shared` is the shared state
  of a deployment (core.shared) in each of its two implementations, "process" and "redis",
  and `sd_pools` builds pools on it, so every test of the pool runs against both.
Every fixture stops or closes what it started after the test, the last first and each
whatever another's closing raised (an ExitStack).
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
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
from core.shared import InProcess, InRedis, Shared
from core.factory import close_app, create_app
from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator
from tests import redis_server
from tests.helpers import API_VERSION, SIM_KEY, Sims, backend_settings
from tests.tcp_gate import TcpGate


def pytest_report_header() -> str:
    """Say in one line whether the Redis half of the shared suite runs here."""
    return f"redis: {redis_server.version()}"


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
    closing = ExitStack()

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
        closing.callback(close_app, app)
        return app

    with closing:
        yield make


@pytest.fixture
def app(make_app) -> Flask:
    """An app on a fresh database with default settings."""
    return make_app()


@pytest.fixture
def database_of() -> Iterator[Callable[[Flask], Database]]:
    """Return `database_of(app)`: a separate pymongo handle on the app's database, closed after the test."""
    closing = ExitStack()

    def open_(app: Flask) -> Database:
        direct = closing.enter_context(MongoClient(app.config["MONGO_URI"], serverSelectionTimeoutMS=3000))
        return direct[app.config["MONGO_DB"]]

    with closing:
        yield open_


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


@pytest.fixture(scope="session")
def paint() -> PaintApp:
    """The paint app on the real settings/ directory (checked once per session), without Flask."""
    return PaintApp()


# -- the shared state of a deployment, in both implementations ------------------------------
@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """Start a real redis-server for the whole session and return its URL (skip where it is missing)."""
    if redis_server.binary() is None:
        pytest.skip(redis_server.MISSING)
    server = redis_server.RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def make_shared(request: pytest.FixtureRequest) -> Iterator[Callable[..., Shared]]:
    """Return a factory of shared states of `kind` ("process" or "redis": each on keys of its own test)."""
    closing = ExitStack()
    prefix = f"test-{uuid.uuid4().hex[:12]}:"

    def make(kind: str, *, prefix: str = prefix, **settings: Any) -> Shared:
        if kind == "process":
            return InProcess()
        shared = InRedis(request.getfixturevalue("redis_url"), prefix=prefix, **settings)
        closing.callback(shared.close)
        return shared

    with closing:
        yield make


@pytest.fixture(params=["process", "redis"])
def shared_kind(request: pytest.FixtureRequest) -> str:
    """Each implementation of the shared state in turn: the shared suite runs against both."""
    return request.param


@pytest.fixture
def shared(make_shared, shared_kind: str) -> Shared:
    """The shared state of one deployment, in this process or in Redis."""
    return make_shared(shared_kind)


# -- simulated backends and clients of them -------------------------------------------------
@pytest.fixture
def chat_sim() -> Iterator[ChatSimulator]:
    """Run a chat simulator on a free loopback port for one test."""
    with ChatSimulator(api_key=SIM_KEY, hang_timeout=10.0) as sim:
        yield sim


@pytest.fixture
def sd_sims() -> Iterator[Callable[..., SDWebUISimulator]]:
    """Return a factory of started WebUI simulators; each is stopped after the test."""
    closing = ExitStack()

    def make(**kwargs: Any) -> SDWebUISimulator:
        sim = SDWebUISimulator(**kwargs).start()
        closing.callback(sim.stop)
        return sim

    with closing:
        yield make


@pytest.fixture
def sims(chat_sim: ChatSimulator, sd_sims) -> Sims:
    """A chat simulator and three SD WebUI simulators for one test."""
    return Sims(chat_sim, [sd_sims() for _ in range(3)])


@pytest.fixture
def make_gpt(chat_sim: ChatSimulator) -> Iterator[Callable[..., GPTClient]]:
    """Return a factory of GPT clients on `chat_sim` ("azure" or "openai", slots in `shared`), closed after the test."""
    closing = ExitStack()

    def make(provider: str = "azure", shared: Shared | None = None, **settings: Any) -> GPTClient:
        if provider == "azure":
            env = {"AZURE_OPENAI_ENDPOINT": chat_sim.url, "AZURE_OPENAI_API_KEY": SIM_KEY,
                   "AZURE_OPENAI_API_VERSION": API_VERSION}
        else:
            env = {"OPENAI_API_KEY": SIM_KEY, "OPENAI_BASE_URL": f"{chat_sim.url}/v1"}
        env.update({"GPT_TIMEOUT": "5", "GPT_MAX_RETRIES": "0"})
        env.update({name: str(value) for name, value in settings.items()})
        client = GPTClient.from_config(from_env(env), shared)
        closing.callback(client.close)
        return client

    with closing:
        yield make


@pytest.fixture
def sd_pools(make_shared, shared_kind: str) -> Iterator[Callable[..., SDInstancePool]]:
    """Return a factory of pools with test-sized timeouts, on each board in turn; each is closed after the test.

    Every pool is a deployment of its own unless `shared` is given (several pools on one
    Redis state are several processes of one deployment).
    """
    closing = ExitStack()

    def make(endpoints: list[str], *, shared: Shared | None = None, **kwargs: Any) -> SDInstancePool:
        settings = {"connect_timeout": 1.0, "read_timeout": 5.0, "acquire_timeout": 5.0,
                    "cooldown": 30.0, "max_attempts": 3, "probe_timeout": 1.0, **kwargs}
        if shared is None:
            shared = make_shared(shared_kind, prefix=f"test-{uuid.uuid4().hex[:12]}:")
        pool = SDInstancePool(endpoints, shared=shared, **settings)
        closing.callback(pool.close)
        return pool

    with closing:
        yield make


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


# -- a client and a database handle of each app fixture --------------------------------------
def _client_and_db(app: str) -> tuple[Any, Any]:
    """Return the fixtures `<prefix>client` and `<prefix>db` of the app fixture `<prefix>app`."""
    prefix = app.removesuffix("app")

    @pytest.fixture(name=f"{prefix}client")
    def client_of(request: pytest.FixtureRequest) -> FlaskClient:
        """A test client of the app."""
        return request.getfixturevalue(app).test_client()

    @pytest.fixture(name=f"{prefix}db")
    def db_of(request: pytest.FixtureRequest, database_of) -> Database:
        """A separate pymongo handle on the app's database, to check what was really written."""
        return database_of(request.getfixturevalue(app))

    return client_of, db_of


client, db = _client_and_db("app")
gen_client, gen_db = _client_and_db("gen_app")
