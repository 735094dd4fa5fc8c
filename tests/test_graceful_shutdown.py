"""SIGTERM to the production server (gunicorn -c gunicorn.conf.py app:app) with requests in flight.

gunicorn runs as a subprocess against simulators in this process and the session's store,
reached through a TcpGate. Two generations are held in their first GPT call and two saves
in their first database call; SIGTERM arrives while all four are held; then the holds
are let go. Every request must finish with its full answer, every record and save must
be stored, and gunicorn must exit cleanly within its graceful timeout.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import requests
from pymongo import MongoClient

from apps.records import COLLECTION
from core.embedded_store import free_port
from core.factory import close_app, create_app
from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator
from tests.helpers import (
    GUNICORN, RAPID_TWO, ServerProcess, Worker, answers_ping, body, check_rapid, save_body, scheme, server_env,
    wait_until,
)
from tests.tcp_gate import TcpGate

KEY = "graceful-sim-key"
GRACEFUL_TIMEOUT = 10
USERS = ("alice", "bob")


def server_settings(port: int, store_port: int, db_name: str, chat: ChatSimulator, sds,
                    data_dir: Path) -> dict[str, str]:
    """Return the environment of the production server, every backend on loopback."""
    return server_env(
        HOST="127.0.0.1", PORT=str(port), LOG_LEVEL="INFO",
        MONGO_URI=f"mongodb://127.0.0.1:{store_port}/", MONGO_DB=db_name, MONGO_TIMEOUT_MS="5000",
        DATA_DIR=str(data_dir), SD_ENDPOINTS=",".join(sd.endpoint for sd in sds),
        AZURE_OPENAI_ENDPOINT=chat.url, AZURE_OPENAI_API_KEY=KEY,
        GUNICORN_GRACEFUL_TIMEOUT=str(GRACEFUL_TIMEOUT), GUNICORN_THREADS="16",
    )


def post(base: str, path: str, sent: dict) -> tuple[int, dict]:
    """POST JSON and return (status, envelope)."""
    response = requests.post(base + path, json=sent, timeout=30)
    return response.status_code, response.json()


def warm_two_connections(base: str, gate: TcpGate) -> None:
    """Make the server hold two pooled database connections, so two saves need no new one."""
    gate.watch(b"participants")

    def burst() -> bool:
        workers = [Worker(lambda: post(base, "/paint/start", {"username": "alice"})) for _ in range(6)]
        for worker in workers:
            worker.start()
        assert all(worker.outcome(15)[0] == 200 for worker in workers)
        return gate.sent_with(b"participants") >= 2

    wait_until(burst, 15, "two pooled database connections")


def test_sigterm_lets_requests_in_flight_finish(mongo_uri, tmp_path):
    db_name = f"graceful_{os.getpid()}_{free_port()}"
    store_port = int(mongo_uri.rstrip("/").rsplit(":", 1)[1])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with ChatSimulator(api_key=KEY, latency=0.2) as chat, \
            SDWebUISimulator(latency=1.0) as sd1, SDWebUISimulator(latency=1.0) as sd2, \
            TcpGate(("127.0.0.1", store_port)) as gate:
        server = ServerProcess(GUNICORN, server_settings(port, gate.port, db_name, chat, [sd1, sd2],
                                                         tmp_path / "var"))
        try:
            wait_until(lambda: answers_ping(base), 20, "gunicorn to answer")
            for name in USERS:
                assert post(base, "/paint/start", {"username": name})[0] == 200
                assert post(base, "/paint/save", save_body(name, rapid=[scheme("old")], task="old"))[0] == 200
            warm_two_connections(base, gate)

            chat.hang_next(2)
            gate.hold()
            generations = [Worker(lambda n=name: post(base, "/generate", body(0, RAPID_TWO, n))) for name in USERS]
            new = {name: save_body(name, rapid=[scheme("old"), scheme("new")], stage="深入发散", task="new")
                   for name in USERS}
            saves = [Worker(lambda n=name: post(base, "/paint/save", new[n])) for name in USERS]
            for worker in generations + saves:
                worker.start()
            wait_until(lambda: chat.held == 2 and gate.held_with(b"participants") == 2, 15, "all four in flight")

            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: server.said("Handling signal: term"), 10, "gunicorn to take the signal")
            gate.open()
            chat.release()
            for worker in generations:
                status, answer = worker.outcome(30)
                assert status == 200
                check_rapid(answer, 2)
            assert [worker.outcome(30) for worker in saves] == [(200, _ok())] * 2
            assert server.process.wait(GRACEFUL_TIMEOUT + 5) == 0
            assert time.monotonic() - started < GRACEFUL_TIMEOUT  # finished, not cut off
            assert len(sd1.jobs) + len(sd2.jobs) == 4
        finally:
            server.close()
    output = server.output()
    assert "Traceback" not in output and "could not write" not in output, output
    check_stored(mongo_uri, db_name)


def _ok() -> dict:
    return {"success": True, "data": None, "code": 0, "message": ""}


def check_stored(mongo_uri: str, db_name: str) -> None:
    """Check both records say ok and both participants hold the new save on top of the old one."""
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=3000) as direct:
        db = direct[db_name]
        records = list(db[COLLECTION].find({}))
        assert sorted((r["username"], r["status"]) for r in records) == [("alice", "succeeded"), ("bob", "succeeded")]
        for name in USERS:
            participant = db["participants"].find_one({"username": name})
            assert participant["designTask"] == "new" and participant["revision"] == 2
            assert len(participant["schemeRefs"]["rapidDivergenceSchemes"]) == 2
            revisions = sorted(e["revision"] for e in db["session_history"].find({"username": name}))
            assert revisions == [1, 2]
        direct.drop_database(db_name)


def test_close_app_closes_what_the_app_opened(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path)}, env={})  # no MONGO_URI: it starts the embedded store
    store = app.extensions["embedded_store"]
    socket.create_connection((store.host, store.port), timeout=1).close()
    close_app(app)
    with pytest.raises(OSError):
        socket.create_connection((store.host, store.port), timeout=1).close()
    assert app.extensions["sd_pool"].snapshot()["closed"]
