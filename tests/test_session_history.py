"""GET /paint/history and /paint/history/<id> over the real wire connection."""
from __future__ import annotations

import json
from datetime import datetime

import pytest
from bson import ObjectId

from apps.paint import sessions
from tests.helpers import Worker, save_body, scheme, wait_until

CLIENT_KEYS = ["_id", "username", "currentStage", "designTask",
               "rapidDivergenceSchemes", "deepDivergenceSchemes", "convergenceSchemes"]


@pytest.fixture
def three_saves(client):
    """Alice saved three states; return the bodies in the order sent."""
    client.post("/paint/start", json={"username": "alice"})
    bodies = [
        save_body("alice", rapid=[scheme("a")], task="first"),
        save_body("alice", rapid=[scheme("a"), scheme("b")], deep=[scheme("c")], stage="深入发散", task="second"),
        save_body("alice", rapid=[scheme("a")], deep=[scheme("c")], convergence=[scheme("d")], stage="收敛",
                  task="third"),
    ]
    for body in bodies:
        assert client.post("/paint/save", json=body).status_code == 200
    return bodies


def test_history_lists_saves_newest_first_with_counts(client, three_saves):
    response = client.get("/paint/history?username=alice")
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert data["username"] == "alice"
    saves = data["saves"]
    assert [s["designTask"] for s in saves] == ["third", "second", "first"]
    assert [s["revision"] for s in saves] == [3, 2, 1]
    assert saves[0]["counts"] == {"快速发散": 1, "深入发散": 1, "收敛": 1}
    assert saves[1]["counts"] == {"快速发散": 2, "深入发散": 1, "收敛": 0}
    assert saves[1]["currentStage"] == "深入发散" and saves[1]["kind"] == "save"
    assert len(saves[0]["id"]) == 24 and datetime.fromisoformat(saves[0]["savedAt"]).tzinfo is not None
    limited = client.get("/paint/history?username=alice&limit=2").get_json()["data"]["saves"]
    assert limited == saves[:2]


def test_each_past_state_comes_back_in_the_start_shape(client, three_saves):
    participant = client.post("/paint/start", json={"username": "alice"}).get_json()["data"]
    saves = client.get("/paint/history?username=alice").get_json()["data"]["saves"]
    for summary, body in zip(saves, reversed(three_saves), strict=True):
        response = client.get(f"/paint/history/{summary['id']}")
        assert response.status_code == 200
        state = response.get_json()["data"]
        assert list(state) == CLIENT_KEYS
        assert state["_id"] == participant["_id"] and state["username"] == "alice"
        sent = body["data"]
        assert state["designTask"] == sent["designTask"] and state["currentStage"] == sent["currentStage"]
        assert json.dumps(state["deepDivergenceSchemes"]) == json.dumps(sent["designSchemes"]["深入发散"])
        assert json.dumps(state["rapidDivergenceSchemes"]) == json.dumps(sent["designSchemes"]["快速发散"])


def test_new_participant_has_an_empty_history(client):
    client.post("/paint/start", json={"username": "fresh"})
    assert client.get("/paint/history?username=fresh").get_json()["data"] == {"username": "fresh", "saves": []}


@pytest.mark.parametrize("query,field", [
    ("", "username"),
    ("username=", "username"),
    ("username=%20%20", "username"),
    ("username=" + "x" * 129, "username"),
    ("username=alice&limit=0", "limit"),
    ("username=alice&limit=1001", "limit"),
    ("username=alice&limit=ten", "limit"),
    ("username=alice&limit=", "limit"),
    ("username=alice&since=1", "since"),
])
def test_bad_history_queries_name_the_parameter(client, three_saves, query, field):
    response = client.get(f"/paint/history?{query}")
    assert response.status_code == 400
    body = response.get_json()
    assert body["success"] is False and body["code"] == 1 and body["message"].startswith(field)


@pytest.mark.parametrize("path,status,word", [
    ("/paint/history?username=nobody", 404, "nobody"),
    ("/paint/history/not-an-id", 400, "id"),
    ("/paint/history/" + "f" * 25, 400, "id"),
    (f"/paint/history/{ObjectId()}", 404, "no saved state"),
])
def test_unknown_users_and_ids(client, three_saves, path, status, word):
    response = client.get(path)
    assert response.status_code == status
    assert word in response.get_json()["message"]


def test_pending_entry_of_a_failed_save_is_not_shown(gated_app, wire_gate, database_of):
    client, db = gated_app.test_client(), database_of(gated_app)
    client.post("/paint/start", json={"username": "alice"})
    for task in ("first", "second", "third"):
        assert client.post("/paint/save", json=save_body("alice", task=task)).status_code == 200
    # The database refuses the write that would make the save current (after the one that numbered it).
    wire_gate.refuse("findAndModify", "participants", skip=1)
    assert client.post("/paint/save", json=save_body("alice", task="never")).status_code == 503
    pending = db[sessions.HISTORY].find_one({"designTask": "never"})
    assert pending is not None and pending["status"] == sessions.PENDING
    assert client.get(f"/paint/history/{pending['_id']}").status_code == 404
    tasks = [s["designTask"] for s in client.get("/paint/history?username=alice").get_json()["data"]["saves"]]
    assert tasks == ["third", "second", "first"]

def test_of_two_overlapping_saves_the_one_sent_last_stays_current(gated_app, wire_gate):
    client = gated_app.test_client()
    client.post("/paint/start", json={"username": "alice"})
    assert client.post("/paint/save", json=save_body("alice", task="before")).status_code == 200
    # The first save is held as it stores its sketch: after it arrived, before it is numbered.
    wire_gate.hold_sender(b"sent first")
    first = Worker(lambda: client.post("/paint/save", json=save_body(
        "alice", rapid=[scheme("sent first")], task="sent first")))
    first.start()
    wait_until(lambda: wire_gate.held_with(b"sent first") == 1, what="the first save to be held")
    last = client.post("/paint/save", json=save_body("alice", rapid=[scheme("sent last")], task="sent last"))
    assert last.status_code == 200
    wire_gate.open()
    assert first.outcome(10).status_code == 200  # stored too, later

    session = client.post("/paint/start", json={"username": "alice"}).get_json()["data"]
    assert session["designTask"] == "sent last"
    assert [s["name"] for s in session["rapidDivergenceSchemes"]] == ["sent last"]
    saves = client.get("/paint/history?username=alice").get_json()["data"]["saves"]
    assert sorted(s["designTask"] for s in saves) == ["before", "sent first", "sent last"]  # history keeps both


def test_the_saves_of_a_restarted_server_come_after_those_of_the_last_one(make_app):
    before = make_app()
    client = before.test_client()
    client.post("/paint/start", json={"username": "alice"})
    for task in ("first run, one", "first run, two"):
        assert client.post("/paint/save", json=save_body("alice", task=task)).status_code == 200
    after = make_app(MONGO_DB=before.config["MONGO_DB"]).test_client()  # counts its arrivals afresh
    assert after.post("/paint/save", json=save_body("alice", task="second run")).status_code == 200
    assert after.post("/paint/start", json={"username": "alice"}).get_json()["data"]["designTask"] == "second run"
    saves = after.get("/paint/history?username=alice").get_json()["data"]["saves"]
    assert [s["designTask"] for s in saves] == ["second run", "first run, two", "first run, one"]
