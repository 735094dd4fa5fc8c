"""MongoDB stopped during a save and during a generation, then started again on the same files.

Each test runs its own nx-27017 (tests.fault_fixtures.own_store), stops its process at a
chosen point of the request, checks the answer, starts it again on the same port and data
directory, and checks that the same app recovers without a restart and that everything
saved before the outage is intact.
"""
from __future__ import annotations

import logging

import pytest
from pymongo.errors import AutoReconnect

from apps.paint import scheme_store, sessions
from apps.record_backlog import RecordBacklog
from tests.fault_fixtures import (  # noqa: F401  (fixtures)
    all_records, check_rapid, direct_client, generate, own_store,
)
from tests.generate_fixtures import PROMPTS, make_gen_app, sims  # noqa: F401
from tests.helpers import save_body, scheme, wait_until
from tests.sd_fixtures import Worker


@pytest.fixture
def store_app(make_gen_app, own_store):
    """An app wired to the simulators whose database is `own_store`."""
    return make_gen_app(MONGO_URI=own_store.uri, MONGO_TIMEOUT_MS=1000)


def seed(client) -> dict[str, dict]:
    """Give alice two saves and bob one; return what /paint/start answers for each."""
    bodies = [save_body("alice", rapid=[scheme("a1")], task="first"),
              save_body("alice", rapid=[scheme("a1"), scheme("a2")], stage="深入发散", task="second"),
              save_body("bob", rapid=[scheme("b1")], task="bob's task")]
    for name in ("alice", "bob"):
        assert client.post("/paint/start", json={"username": name}).status_code == 200
    for sent in bodies:
        assert client.post("/paint/save", json=sent).status_code == 200
    return {name: started(client, name) for name in ("alice", "bob")}


def started(client, name: str) -> dict:
    """Return the session /paint/start answers for `name`."""
    response = client.post("/paint/start", json={"username": name})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def revisions(client, name: str) -> list[int]:
    """Return the revisions the participant's history shows, newest first."""
    saves = client.get(f"/paint/history?username={name}").get_json()["data"]["saves"]
    return [entry["revision"] for entry in saves]


def stop_before(monkeypatch, module, name: str, store) -> None:
    """Make `module.name` stop the store, then run as usual (and so meet a dead database)."""
    original = getattr(module, name)

    def stopping(*args, **kwargs):
        store.stop()
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, stopping)


@pytest.mark.parametrize("module,name,stored", [
    (scheme_store, "store", False),  # before the sketches are written
    (sessions, "_set_state", False),  # after the history entry, before the state switches
    (sessions, "_mark_committed", True),  # after the state switched: the save did happen
], ids=["sketches", "state", "marking"])
def test_database_stopped_during_a_save(store_app, own_store, monkeypatch, module, name, stored):
    client = store_app.test_client()
    before = seed(client)
    new = save_body("alice", rapid=[scheme("a1")], deep=[scheme("a3")], stage="收敛", task="third")
    stop_before(monkeypatch, module, name, own_store)
    response = client.post("/paint/save", json=new)
    answer = response.get_json()
    if stored:
        assert response.status_code == 200 and answer["code"] == 0
    else:
        assert response.status_code == 503 and answer["code"] == 3 and answer["success"] is False
        assert "database" in answer["message"]
    assert client.get("/ping").status_code == 200  # the server itself is fine

    monkeypatch.undo()
    own_store.start()  # same port, same files
    alice = started(client, "alice")
    if stored:
        assert alice["designTask"] == "third" and alice["deepDivergenceSchemes"] == [scheme("a3")]
        assert revisions(client, "alice") == [3, 2, 1]
    else:
        assert alice == before["alice"]  # the previous state, sketches and all
        assert revisions(client, "alice") == [2, 1]  # the half-done save left nothing visible
    assert started(client, "bob") == before["bob"]

    assert client.post("/paint/save", json=new).status_code == 200  # recovered without a restart
    assert started(client, "alice")["convergenceSchemes"] == [] and revisions(client, "alice")[0] >= 3


def test_database_stopped_during_a_generation(store_app, own_store, sims, caplog):
    client = store_app.test_client()
    before = seed(client)
    sims.chat.hang_next(1)  # hold the generation in its first GPT call
    worker = Worker(lambda: generate(client))
    worker.start()
    wait_until(lambda: sims.chat.held == 1, what="the generation in flight")
    own_store.stop()
    sims.chat.release()
    with caplog.at_level(logging.WARNING):
        status, answer = worker.outcome(30)
    # The participant still gets the stimuli: they need no database, only the record does.
    assert status == 200
    check_rapid(answer, 2)
    assert "kept in memory" in caplog.text

    status, answer = generate(client, 2, PROMPTS[2])  # still down: same answer
    assert status == 200 and answer["success"] is True

    own_store.start()
    status, answer = generate(client, 2, PROMPTS[2])  # its record goes first, then the backlog
    assert status == 200 and answer["success"] is True
    with direct_client(own_store) as direct:
        db = direct[store_app.config["MONGO_DB"]]
        records = all_records(db)
        assert [(r["type"], r["status"]) for r in records] == [(0, "ok"), (2, "ok"), (2, "ok")]
        first, kept_too = records[0], records[1]
        assert kept_too["input"]["schemes"][0]["designImage"]["contentType"] == "image/png"
        assert first["finishedAt"] < records[2]["createdAt"]  # timed when it ran, not when written
        images = [step["image"]["sha256"] for step in first["steps"] if step["kind"] == "image"]
        assert len(images) == 2 and len(list(db["fs.files"].find({"_id": {"$in": images}}))) == 2
    assert started(client, "alice") == before["alice"] and started(client, "bob") == before["bob"]


class _Record:
    """A stand-in for a waiting record: writes fail with `failure` until it is cleared."""

    def __init__(self, record_id: int, failure: Exception | None = None) -> None:
        self.record_id, self.failure, self.writes = record_id, failure, 0

    def write(self) -> None:
        self.writes += 1
        if self.failure is not None:
            raise self.failure


def test_record_backlog_is_bounded_and_keeps_order_while_the_database_is_away(caplog):
    backlog = RecordBacklog(limit=2, batch=4)
    first, second, third = _Record(1), _Record(2, AutoReconnect("down")), _Record(3)
    for record in (first, second, third):
        backlog.keep(record)
    assert len(backlog) == 2 and "generation record 1 lost" in caplog.text  # the oldest goes

    assert backlog.flush() == 0 and len(backlog) == 2 and third.writes == 0  # down: all put back
    second.failure = None
    assert backlog.flush() == 2 and len(backlog) == 0
    assert (first.writes, second.writes, third.writes) == (0, 2, 1)

    broken = _Record(4, ValueError("not storable"))
    backlog.keep(broken)
    assert backlog.flush() == 0 and len(backlog) == 0  # a record that can never be written is dropped
    assert "generation record 4 could not be written" in caplog.text
