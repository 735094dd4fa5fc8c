"""Fixtures shared by the suite: a real wire-compatible MongoDB server and app instances.

The database is nx-27017 started once per test session on a free loopback port; every
app gets a database of its own name, so tests never see each other's data.
"""
from __future__ import annotations

import uuid

import pytest
from pymongo import MongoClient

from core.backends import close_app_backends
from core.embedded_store import EmbeddedStore
from core.factory import create_app


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory):
    """Start the wire-compatible server for the whole session and return its URI."""
    store = EmbeddedStore(tmp_path_factory.mktemp("mongo")).start()
    yield store.uri
    store.stop()


@pytest.fixture
def make_app(mongo_uri, tmp_path):
    """Return a factory of apps on a fresh database, closing them after the test."""
    made = []

    def make(**overrides):
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
        close_app_backends(app)
        app.extensions["mongo"].close()


@pytest.fixture
def app(make_app):
    """An app on a fresh database with default settings."""
    return make_app()


@pytest.fixture
def client(app):
    """A test client of `app`."""
    return app.test_client()


@pytest.fixture
def db(app, mongo_uri):
    """A separate pymongo handle on the app's database, to check what was really written."""
    direct = MongoClient(mongo_uri, serverSelectionTimeoutMS=2000)
    yield direct[app.config["MONGO_DB"]]
    direct.close()
