"""Bad requests to the session routes: a 4xx envelope naming the field, nothing written, never a 5xx."""
from __future__ import annotations

import copy

import pytest

from tests.helpers import save_body, scheme

JSON = "application/json"


def _save(**changes):
    body = save_body("alice", rapid=[scheme()])
    for path, value in changes.items():
        target = body
        *parents, last = path.split("__")
        for key in parents:
            target = target[key]
        target[last] = value
    return body


def _without(path):
    body = save_body("alice", rapid=[scheme()])
    target = body
    *parents, last = path.split("__")
    for key in parents:
        target = target[key]
    del target[last]
    return body


def _nested(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


# (route, raw body or JSON-able value, content type, status, field named in the message)
RAW = [
    ("/paint/start", b"{", JSON, 400, "body"),
    ("/paint/start", b"not json at all", JSON, 400, "body"),
    ("/paint/start", b"", JSON, 400, "body"),
    ("/paint/start", b'{"username": "alice"}', "text/plain", 400, "body"),
    ("/paint/start", b'{"username": "alice"}', "application/x-www-form-urlencoded", 400, "body"),
    ("/paint/start", b"[1, 2]", JSON, 400, "body"),
    ("/paint/start", b'"alice"', JSON, 400, "body"),
    ("/paint/start", b"null", JSON, 400, "body"),
    ("/paint/start", b"[" * 100_000 + b"]" * 100_000, JSON, 400, "body"),
    ("/paint/start", b'{"username": "\xff\xfe"}', JSON, 400, "body"),
    ("/paint/save", b"{", JSON, 400, "body"),
    ("/paint/save", b"[]", JSON, 400, "body"),
]

START = [
    ({}, "username"),
    ({"username": None}, "username"),
    ({"username": ""}, "username"),
    ({"username": "   "}, "username"),
    ({"username": "x" * 129}, "username"),
    ({"username": 42}, "username"),
    ({"username": True}, "username"),
    ({"username": ["alice"]}, "username"),
    ({"username": {"$ne": ""}}, "username"),
    ({"username": {"$gt": ""}}, "username"),
    ({"username": {"$regex": ".*"}}, "username"),
    ({"username": "a\x00b"}, "username"),
    # Invisible or direction characters: the name would look like another one, or like none.
    ({"username": "\u202e\u200badmin"}, "username"),
    ({"username": "ali\u200dce"}, "username"),
    ({"username": "al\tice"}, "username"),
    ({"username": "alice\u2028bob"}, "username"),
    ({"username": "\ue000alice"}, "username"),
    ({"username": "\u3164"}, "username"),
    ({"username": "alice\U000e0041"}, "username"),
    ({"username": "\u200b"}, "username"),
]

SAVE = [
    (_save(username={"$ne": ""}), "username"),
    (_save(username=""), "username"),
    (_without("username"), "username"),
    (_save(data=None), "data"),
    (_save(data="state"), "data"),
    (_save(data=[]), "data"),
    (_without("data__designSchemes"), "data.designSchemes"),
    (_save(data__designSchemes=[]), "data.designSchemes"),
    (_save(data__designSchemes__快速发散="sketch"), "data.designSchemes.快速发散"),
    (_save(data__designSchemes__深入发散={"0": {}}), "data.designSchemes.深入发散"),
    (_save(data__designSchemes__收敛=[1, 2]), "data.designSchemes.收敛[0]"),
    (_save(data__designSchemes__快速发散=[None]), "data.designSchemes.快速发散[0]"),
    (_save(data__designSchemes__unknownStage=[]), "data.designSchemes"),
    (_save(data__designSchemes__快速发散=[{"$set": {"username": "bob"}}]), "data.designSchemes.快速发散[0].$set"),
    (_save(data__designSchemes__快速发散=[{"a.b": 1}]), "data.designSchemes.快速发散[0].a.b"),
    (_save(data__designSchemes__快速发散=[{"big": 2**70}]), "data.designSchemes.快速发散[0].big"),
    (_save(data__designSchemes__快速发散=[{"deep": _nested(45)}]), "data.designSchemes.快速发散[0]"),
    (_without("data__designTask"), "data.designTask"),
    (_save(data__designTask=5), "data.designTask"),
    (_save(data__designTask={"$ne": ""}), "data.designTask"),
    (_save(data__designTask="x" * 2001), "data.designTask"),
    (_without("data__currentStage"), "data.currentStage"),
    (_save(data__currentStage="stage-7"), "data.currentStage"),
    (_save(data__currentStage=3), "data.currentStage"),
]


def _assert_rejected(response, status, field, db):
    assert response.status_code == status
    body = response.get_json()
    assert set(body) == {"success", "data", "code", "message"}
    assert body["success"] is False and body["data"] is None and body["code"] == 1
    assert body["message"].startswith(field), body["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    assert db.participants.count_documents({"username": {"$ne": "alice"}}) == 0


@pytest.fixture
def seeded(client, db):
    """A database with one participant, alice, holding one sketch."""
    client.post("/paint/start", json={"username": "alice"})
    client.post("/paint/save", json=save_body("alice", rapid=[scheme("original")]))
    return copy.deepcopy(db.participants.find_one({"username": "alice"}))


def _alice_unchanged(db, seeded):
    assert db.participants.find_one({"username": "alice"}) == seeded


@pytest.mark.parametrize("route,raw,content_type,status,field", RAW)
def test_malformed_bodies(client, db, seeded, route, raw, content_type, status, field):
    response = client.post(route, data=raw, content_type=content_type)
    _assert_rejected(response, status, field, db)
    _alice_unchanged(db, seeded)


@pytest.mark.parametrize("body,field", START)
def test_bad_start_bodies(client, db, seeded, body, field):
    response = client.post("/paint/start", json=body)
    _assert_rejected(response, 400, field, db)
    assert "original" not in response.get_data(as_text=True)


@pytest.mark.parametrize("body,field", SAVE)
def test_bad_save_bodies(client, db, seeded, body, field):
    response = client.post("/paint/save", json=body)
    _assert_rejected(response, 400, field, db)
    _alice_unchanged(db, seeded)


def test_oversized_body_is_413_in_the_envelope(make_app):
    client = make_app(MAX_CONTENT_LENGTH=1024).test_client()
    response = client.post("/paint/start", json={"username": "a" * 2000})
    assert response.status_code == 413
    body = response.get_json()
    assert body["success"] is False and body["code"] == 1 and "larger" in body["message"]


def test_table_has_at_least_thirty_cases():
    assert len(RAW) + len(START) + len(SAVE) >= 30
