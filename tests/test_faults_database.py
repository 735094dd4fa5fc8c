"""MongoDB lost during a save and during a generation, then back on the same files.

Each test runs its own nx-27017 (`own_store`), reached through a TcpGate (`gate`). A save
loses its database at a chosen write: the gate cuts every connection when the wire shows
that command on that collection (never by patching the session code, which may change),
and while it is down the store's process restarts on the same port and data directory.
A generation loses it by the store's process stopping while GPT holds the request, or by
the gate cutting it when its record is written; the record then waits in the journal on
disk until the database is back, for the same app or for the next one on that DATA_DIR.
Each test checks the answer, then that the same app recovers without a restart and that
everything saved before the outage is intact. Last, that a save is answered only once the
store has synced it.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from pymongo import MongoClient

from apps.records import StoredRecord
from core.embedded_store import EmbeddedStore, free_port
from core.factory import close_app
from core.image_store import Image, put_image
from tests.fsync_count import FsyncCount
from tests.helpers import (
    PROMPTS, Worker, all_records, check_rapid, image_steps, post_generate, save_body, scheme, wait_until,
)
from tests.tcp_gate import TcpGate

WRITES = {"insert", "update", "delete", "findAndModify"}  # the commands that change data


@pytest.fixture
def own_store(tmp_path) -> Iterator[EmbeddedStore]:
    """A store of this test only, on a fixed free port with its own data directory."""
    store = EmbeddedStore(tmp_path / "own-mongo", port=free_port()).start()
    yield store
    store.stop()


@pytest.fixture
def gate(own_store: EmbeddedStore) -> Iterator[TcpGate]:
    """A relay between the app and `own_store` that can cut the traffic at a chosen write."""
    with TcpGate((own_store.host, own_store.port)) as relay:
        yield relay


@pytest.fixture
def store_app(make_gen_app, gate: TcpGate):
    """An app wired to the simulators whose database is `own_store`, through `gate`."""
    return make_gen_app(MONGO_URI=gate.uri, MONGO_TIMEOUT_MS=1000, RECORD_RETRY=0.2)


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


# When the database goes away during a save: a command on a collection, as the wire names them.
@pytest.mark.parametrize("cut, stored", [
    (lambda gate: gate.cut_before(None, "session_schemes"), False),  # before any sketch is written
    (lambda gate: gate.cut_after("insert", "session_history"), False),  # the entry written, not the state
    (lambda gate: gate.cut_before("update", "session_history"), True),  # after the state switched: saved
], ids=["sketches", "state", "marking"])
def test_database_lost_during_a_save(store_app, gate, own_store, cut, stored):
    client = store_app.test_client()
    before = seed(client)
    new = save_body("alice", rapid=[scheme("a1")], deep=[scheme("a3")], stage="收敛", task="third")
    cut(gate)
    response = client.post("/paint/save", json=new)
    assert gate.is_down, "the save never sent the command the gate was to cut at"
    answer = response.get_json()
    if stored:
        assert response.status_code == 200 and answer["code"] == 0
    else:
        assert response.status_code == 503 and answer["code"] == 3 and answer["success"] is False
        assert "database" in answer["message"]
    assert client.get("/ping").status_code == 200  # the server itself is fine

    own_store.stop()  # as if the process had died at that write: back on the same port and files
    own_store.start()
    gate.mend()
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


def test_a_save_is_answered_only_once_it_is_on_disk(store_app, gate, own_store):
    # A power loss can take what the store has not synced; what it acknowledged must be synced.
    unavailable = FsyncCount.unavailable(own_store.pid)
    if unavailable:
        pytest.skip(unavailable)
    client = store_app.test_client()
    assert client.post("/paint/start", json={"username": "alice"}).status_code == 200
    writes = gate.count_commands(WRITES)
    with FsyncCount(own_store.pid) as synced:
        for n in range(5):
            sent = save_body("alice", rapid=[scheme(f"sketch {n}")], task=f"task {n}")
            assert client.post("/paint/save", json=sent).status_code == 200
    writes = gate.count_commands(WRITES) - writes
    # Each save's writes: its new scheme, the revision, its history entry, the state, the marking.
    assert writes >= 5 * 5
    assert synced.calls >= writes  # a sync per acknowledged write (synchronous=NORMAL made none)


def test_database_stopped_during_a_generation(store_app, own_store, sims, caplog):
    client = store_app.test_client()
    before = seed(client)
    sims.chat.hang_next(1)  # hold the generation in its first GPT call
    worker = Worker(lambda: post_generate(client))
    worker.start()
    wait_until(lambda: sims.chat.held == 1, what="the generation in flight")
    own_store.stop()
    sims.chat.release()
    with caplog.at_level(logging.WARNING):
        status, answer = worker.outcome(30)
    # The participant still gets the stimuli: they need no database, only the record does.
    assert status == 200
    check_rapid(answer, 2)
    assert "kept in the journal" in caplog.text

    status, answer = post_generate(client, 2, PROMPTS[2])  # still down: same answer
    assert status == 200 and answer["success"] is True

    own_store.start()
    status, answer = post_generate(client, 2, PROMPTS[2])  # its record goes first, then the journal's
    assert status == 200 and answer["success"] is True
    with MongoClient(own_store.uri, serverSelectionTimeoutMS=3000) as direct:
        db = direct[store_app.config["MONGO_DB"]]
        wait_until(lambda: len(all_records(db)) == 3, what="the journal's records")
        records = all_records(db)
        assert [(r["type"], r["status"]) for r in records] == [(0, "succeeded"), (2, "succeeded"), (2, "succeeded")]
        first, kept_too = records[0], records[1]
        assert kept_too["input"]["schemes"][0]["designImage"]["contentType"] == "image/png"
        assert first["finishedAt"] < records[2]["createdAt"]  # timed when it ran, not when written
        images = [step["image"]["sha256"] for step in image_steps(first)]
        assert len(images) == 2 and len(list(db["fs.files"].find({"_id": {"$in": images}}))) == 2
    assert started(client, "alice") == before["alice"] and started(client, "bob") == before["bob"]


def journal_of(app) -> list[StoredRecord]:
    """Return the records waiting in the app's journal, read from its file."""
    path = app.extensions["record_journal"].path
    return [StoredRecord.from_line(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def stored_records(store: EmbeddedStore, app) -> list[dict]:
    """Return the app's generation records as the store holds them, read past the gate."""
    with MongoClient(store.uri, serverSelectionTimeoutMS=3000) as direct:
        return all_records(direct[app.config["MONGO_DB"]])


def wait_for_records(store: EmbeddedStore, app, count: int) -> list[dict]:
    """Wait until the store holds `count` generation records of the app, and return them."""
    wait_until(lambda: len(stored_records(store, app)) >= count, what=f"{count} records in the database")
    return stored_records(store, app)


def generate_while_cut(client, gate: TcpGate, count: int) -> None:
    """Cut the database as the next record's first image is written, then answer `count` generations."""
    gate.cut_before(None, "fs.files")
    for _ in range(count):
        status, answer = post_generate(client)
        assert status == 200  # the stimuli need no database
        check_rapid(answer, 2)
    assert gate.is_down


def test_records_wait_on_disk_while_the_database_is_cut_and_land_once(store_app, gate, own_store):
    client = store_app.test_client()
    assert post_generate(client)[0] == 200  # the database answers: that record is written at once
    assert journal_of(store_app) == []
    generate_while_cut(client, gate, 3)

    waiting = journal_of(store_app)
    assert len(waiting) == 3 and len({record.record_id for record in waiting}) == 3
    for record in waiting:  # whole records, each with the bytes of its two images
        assert record.document["status"] == "succeeded" and len(record.images) == 2
        refs = [step["image"]["sha256"] for step in image_steps(record.document)]
        assert len(refs) == 2 and set(refs) == {image.sha256 for image in record.images}
    # The first cut one was stored as it started, before the cut; its end waits in the journal too.
    assert [r["status"] for r in stored_records(own_store, store_app)] == ["succeeded", "running"]

    gate.mend()  # the store is back: the journal's thread writes what waits, then empties the file
    landed = wait_for_records(own_store, store_app, 4)
    assert len(landed) == 4 and {r["_id"] for r in landed} > {record.record_id for record in waiting}
    journal = store_app.extensions["record_journal"]
    wait_until(lambda: journal.path.stat().st_size == 0, what="the journal to be emptied")
    with MongoClient(own_store.uri, serverSelectionTimeoutMS=3000) as direct:
        db = direct[store_app.config["MONGO_DB"]]
        keys = {image.sha256 for record in waiting for image in record.images}
        assert {doc["_id"] for doc in db["fs.files"].find({"_id": {"$in": list(keys)}})} == keys
    assert post_generate(client)[0] == 200 and len(stored_records(own_store, store_app)) == 5


def test_a_replay_cut_short_writes_no_record_twice(make_gen_app, store_app, gate, own_store):
    client = store_app.test_client()
    assert post_generate(client)[0] == 200
    generate_while_cut(client, gate, 2)
    journal = store_app.extensions["record_journal"]
    kept = journal.path.read_bytes()
    gate.mend()
    wait_for_records(own_store, store_app, 3)
    wait_until(lambda: journal.path.stat().st_size == 0, what="the journal to be emptied")
    close_app(store_app)
    # As if the server had died after writing the records but before emptying the file.
    journal.path.write_bytes(kept)

    again = make_gen_app(MONGO_URI=gate.uri, MONGO_DB=store_app.config["MONGO_DB"])  # same DATA_DIR
    wait_until(lambda: journal.path.stat().st_size == 0, what="the journal to be replayed")
    records = stored_records(own_store, again)
    assert len(records) == len({r["_id"] for r in records}) == 3  # each once


def test_records_waiting_at_exit_are_written_by_the_next_start(make_gen_app, store_app, gate, own_store, caplog):
    client = store_app.test_client()
    assert post_generate(client)[0] == 200
    generate_while_cut(client, gate, 2)
    waiting = {record.record_id for record in journal_of(store_app)}
    close_app(store_app)  # the server stops while the database is still away
    assert len(waiting) == 2 and "2 generation record(s) wait in" in caplog.text

    gate.mend()
    again = make_gen_app(MONGO_URI=gate.uri, MONGO_DB=store_app.config["MONGO_DB"])  # same DATA_DIR
    landed = wait_for_records(own_store, again, 3)
    assert len(landed) == 3 and {r["_id"] for r in landed} > waiting
    assert journal_of(again) == []


def test_an_image_write_waiting_on_the_database_holds_back_no_other_image(own_store, gate):
    # With the database gone, a write waits out MONGO_TIMEOUT_MS; writes of other images must not
    # queue behind it (39 saves once did, one timeout after another, for 138 s).
    gated, direct = MongoClient(gate.uri), MongoClient(own_store.uri)
    try:
        waiting, other = (Image(b"\x89PNG\r\n\x1a\n" + os.urandom(64), "image/png") for _ in range(2))
        gated["images"].command("ping")  # connected: what is held next is the write itself
        gate.hold()
        stuck = Worker(lambda: put_image(gated["images"], waiting))
        stuck.start()
        wait_until(lambda: gate.held_with(b"fs.files"), what="the first write waiting on the database")
        free = Worker(lambda: put_image(direct["images"], other))
        free.start()
        try:
            assert free.outcome(5) == other.sha256 and stuck.is_alive()
        finally:
            gate.open()
        assert stuck.outcome(10) == waiting.sha256
    finally:
        gated.close()
        direct.close()
