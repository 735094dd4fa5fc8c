"""The embedded store is supervised: restarted when it dies, adopted when its supervisor died.

Every test kills real processes (SIGKILL, as the OOM killer or `docker kill` does) and
talks to the store over its socket.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from pymongo import MongoClient

from core.embedded_store import EmbeddedStore
from core.factory import close_app, create_app
from tests.helpers import save_body, scheme, wait_until


def _answers(store: EmbeddedStore) -> bool:
    client = MongoClient(store.uri, serverSelectionTimeoutMS=500)
    try:
        client.admin.command("ping")
        return True
    except Exception:
        return False
    finally:
        client.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def app(tmp_path):
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path), "MONGO_URI": None, "MONGO_TIMEOUT_MS": 1000},
                     env={})
    yield app
    close_app(app)


def test_a_killed_store_is_restarted_on_its_data_and_the_app_serves_again(app):
    client = app.test_client()
    assert client.post("/paint/start", json={"username": "alice"}).status_code == 200
    assert client.post("/paint/save", json=save_body("alice", rapid=[scheme("kept")])).status_code == 200
    store = app.extensions["embedded_store"]
    first = store.pid

    os.kill(first, signal.SIGKILL)
    wait_until(lambda: store.restarts == 1 and _answers(store), what="the store restarted")
    assert store.pid != first and _alive(store.pid)
    response = wait_until(lambda: (r := client.post("/paint/start", json={"username": "alice"})).status_code == 200
                          and r, what="a start answered again")
    assert response.get_json()["data"]["rapidDivergenceSchemes"] == [scheme("kept")]
    ready = client.get("/readyz").get_json()["data"]
    assert ready["database"]["reachable"] and ready["database"]["restarts"] == 1


def test_a_stale_pid_file_naming_a_live_process_does_not_stop_a_start(tmp_path):
    # After a kill, nx-27017's pid file may name a zombie, a reused pid, or (in a container)
    # the new store's own pid; nx-27017 then refuses to start. Our own pid is as alive as any.
    (tmp_path / "mongo").mkdir()
    (tmp_path / "mongo" / "nx-27017.pid").write_text(str(os.getpid()))
    store = EmbeddedStore(tmp_path / "mongo").start()
    try:
        assert store.supervising and _answers(store)
    finally:
        store.stop()


_SUPERVISOR = textwrap.dedent("""
    import sys, time
    from core.embedded_store import EmbeddedStore
    store = EmbeddedStore(sys.argv[1]).start()
    print(store.port, store.pid, flush=True)
    time.sleep(600)
""")


def test_a_store_left_by_a_killed_supervisor_is_adopted_and_stopped_at_the_next_clean_stop(tmp_path):
    data = tmp_path / "mongo"
    supervisor = subprocess.Popen([sys.executable, "-c", _SUPERVISOR, str(data)], stdout=subprocess.PIPE,
                                  text=True, cwd=os.getcwd())
    with supervisor:
        port, pid = (int(word) for word in supervisor.stdout.readline().split())
        supervisor.kill()
    assert _alive(pid), "the store outlived its supervisor, as after kill -9"

    store = EmbeddedStore(data).start()
    assert store.supervising and (store.port, store.pid) == (port, pid) and _answers(store)
    store.stop()
    assert not _alive(pid) and not _answers(store)


def test_a_process_joining_a_supervised_store_leaves_it_running_and_succeeds_its_supervisor(tmp_path):
    owner = EmbeddedStore(tmp_path / "shared").start()
    first, second = EmbeddedStore(tmp_path / "shared").start(), EmbeddedStore(tmp_path / "shared").start()
    try:
        assert first.joined and second.joined and first.port == owner.port
        second.stop()  # a joiner's stop leaves the store to its supervisor
        assert _answers(owner) and _alive(owner.pid)
        owner.stop()  # a clean stop of the supervisor, while `first` still uses the store
        wait_until(lambda: first.supervising and _answers(first), what="the joiner supervising a store")
        assert not second.supervising and first.port == owner.port
    finally:
        first.stop()
        owner.stop()
    assert not _answers(first)


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs to fill, as a study's disk fills; skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk test did not run")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_answers_503_names_it_in_readyz_and_recovers_without_restart(small_disk):
    app = create_app({"TESTING": True, "DATA_DIR": str(small_disk), "MONGO_URI": None, "MONGO_TIMEOUT_MS": 1000},
                     env={})
    try:
        client = app.test_client()
        assert client.post("/paint/start", json={"username": "early"}).status_code == 200
        filler = small_disk / "filler"
        with open(filler, "wb") as out, pytest.raises(OSError):
            while True:
                out.write(bytes(2**20))
        start = client.post("/paint/start", json={"username": "late"})
        assert start.status_code == 503 and start.get_json()["code"] == 3
        assert "disk is full" in start.get_json()["message"]
        save = client.post("/paint/save", json=save_body("early", rapid=[scheme("x")]))
        assert save.status_code == 503 and save.get_json()["code"] == 3 and "not stored" in save.get_json()["message"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["code"] == 3
        assert ready.get_json()["data"]["database"]["disk_full"] and "disk is full" in ready.get_json()["message"]

        filler.unlink()
        assert client.post("/paint/start", json={"username": "late"}).status_code == 200
        assert client.post("/paint/save", json=save_body("early", rapid=[scheme("x")])).status_code == 200
        assert not client.get("/readyz").get_json()["data"]["database"]["disk_full"]
    finally:
        close_app(app)
