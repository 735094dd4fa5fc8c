"""/paint/start and /paint/save over the real wire connection."""
from __future__ import annotations

import threading

import pytest

from core.factory import create_app
from tests.helpers import save_body, scheme

CLIENT_KEYS = ["_id", "username", "currentStage", "designTask",
               "rapidDivergenceSchemes", "deepDivergenceSchemes", "convergenceSchemes"]


def test_start_creates_participant_with_the_seven_keys(client, db):
    response = client.post("/paint/start", json={"username": "alice"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["success"] is True and body["code"] == 0 and body["message"] == ""
    data = body["data"]
    assert list(data) == CLIENT_KEYS
    assert len(data["_id"]) == 24 and int(data["_id"], 16) >= 0
    assert data["currentStage"] == "准备" and data["designTask"] == ""
    assert db.participants.count_documents({"username": "alice"}) == 1


def test_start_twice_returns_the_same_participant(client):
    first = client.post("/paint/start", json={"username": "alice"}).get_json()["data"]
    second = client.post("/paint/start", json={"username": "alice"}).get_json()["data"]
    assert first == second


@pytest.mark.parametrize("spellings", [("alice", " alice ", "\talice\n", "alice\u3000"),
                                       ("\u00e9milie", "e\u0301milie")])  # é composed, and e + combining accent
def test_one_name_however_it_is_spelled_is_one_participant(client, db, spellings):
    ids = {client.post("/paint/start", json={"username": name}).get_json()["data"]["_id"] for name in spellings}
    assert len(ids) == 1
    assert db.participants.count_documents({}) == 1
    assert db.participants.find_one()["username"] == spellings[0]  # stored in its one spelling


def test_an_invisible_character_is_refused_naming_it(client, db):
    response = client.post("/paint/start", json={"username": "\u202e\u200badmin"})
    assert response.status_code == 400
    assert response.get_json()["message"] == ("username: must not contain control, invisible or direction "
                                              "characters (U+202E RIGHT-TO-LEFT OVERRIDE)")
    assert db.participants.count_documents({}) == 0


def test_save_then_start_returns_what_was_saved(client):
    client.post("/paint/start", json={"username": "bob"})
    body = save_body("bob", rapid=[scheme("a"), scheme("b")], deep=[scheme("c")], stage="深入发散")
    response = client.post("/paint/save", json=body)
    assert response.status_code == 200
    assert response.get_json() == {"success": True, "data": None, "code": 0, "message": ""}
    data = client.post("/paint/start", json={"username": "bob"}).get_json()["data"]
    assert data["rapidDivergenceSchemes"] == [scheme("a"), scheme("b")]
    assert data["deepDivergenceSchemes"] == [scheme("c")]
    assert data["convergenceSchemes"] == []
    assert data["currentStage"] == "深入发散"
    assert data["designTask"] == "设计一款运动辅助产品"


def test_save_for_unknown_participant_is_404_and_writes_nothing(client, db):
    response = client.post("/paint/save", json=save_body("nobody"))
    assert response.status_code == 404
    body = response.get_json()
    assert body["success"] is False and body["code"] == 1 and "nobody" in body["message"]
    assert db.participants.count_documents({}) == 0


def test_participants_do_not_see_each_other(client):
    client.post("/paint/start", json={"username": "alice"})
    client.post("/paint/start", json={"username": "bob"})
    client.post("/paint/save", json=save_body("alice", rapid=[scheme("alice's")]))
    bob = client.post("/paint/start", json={"username": "bob"}).get_json()["data"]
    assert bob["rapidDivergenceSchemes"] == []


def test_simultaneous_first_visits_create_one_document(app, db):
    barrier = threading.Barrier(16)
    ids, errors = [], []

    def visit():
        client = app.test_client()
        barrier.wait()
        response = client.post("/paint/start", json={"username": "racer"})
        if response.status_code == 200:
            ids.append(response.get_json()["data"]["_id"])
        else:
            errors.append(response.get_json())

    threads = [threading.Thread(target=visit) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(ids)) == 1 and len(ids) == 16
    assert db.participants.count_documents({"username": "racer"}) == 1


def test_unicode_and_numbers_round_trip_exactly(client):
    client.post("/paint/start", json={"username": "张三"})
    odd = {"name": "😀 名字", "paths": [{"x": 0.1, "y": -3, "big": 2**53}], "empty": {}, "none": None}
    client.post("/paint/save", json=save_body("张三", convergence=[odd], stage="收敛"))
    data = client.post("/paint/start", json={"username": "张三"}).get_json()["data"]
    assert data["convergenceSchemes"] == [odd]


def test_embedded_store_keeps_data_across_restarts(tmp_path):
    settings = {"TESTING": True, "DATA_DIR": str(tmp_path / "var"), "MONGO_URI": None}

    first = create_app(settings, env={})
    client = first.test_client()
    client.post("/paint/start", json={"username": "carol"})
    client.post("/paint/save", json=save_body("carol", rapid=[scheme("kept")]))
    first.extensions["mongo"].close()
    first.extensions["embedded_store"].stop()

    second = create_app(settings, env={})
    try:
        data = second.test_client().post("/paint/start", json={"username": "carol"}).get_json()["data"]
        assert data["rapidDivergenceSchemes"] == [scheme("kept")]
    finally:
        second.extensions["mongo"].close()
        second.extensions["embedded_store"].stop()


