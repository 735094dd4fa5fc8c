"""Whose generation it was: attribution from the real client's flow over HTTP, and its rules.

The web client never sends a username to /generate. Here participants go through its flow
over real loopback HTTP, each browser from its own source address (127.0.0.x) and with its
own User-Agent, two of them sharing one lab machine; every record must end up with the
right participant, or say `ambiguous` where nothing tells them apart.
"""
from __future__ import annotations

import base64
import http.client
import json
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from apps.attribution import CLIENTS, Attribution, Evidence, weigh
from simulators.png import render_png
from tests.helpers import TASK, save_body

TOKEN = "attribution-token"


def sketch(seed: str) -> str:
    """Return a data URI of a PNG of its own, as the client's canvas exports it."""
    return "data:image/png;base64," + base64.b64encode(render_png(12, 8, seed)).decode("ascii")


def drawn(seed: str, notes: list[str]) -> dict[str, Any]:
    """Return a scheme as the client saves it: the sketch image and its notes."""
    return {"name": "", "canvasSvg": "<svg xmlns=\"http://www.w3.org/2000/svg\"/>", "canvasImage": sketch(seed),
            "paths": [], "texts": [{"text": note, "position": {"x": 1, "y": 2}} for note in notes]}


@pytest.fixture
def live(make_gen_app):
    """Serve an app wired to the simulators on 127.0.0.1; yield (app, port)."""
    app = make_gen_app()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, server.server_port
    server.shutdown()
    thread.join()


class Browser:
    """One participant's browser: its own source address and User-Agent, the client's requests."""

    def __init__(self, port: int, address: str, agent: str, headers: dict[str, str] | None = None) -> None:
        self.port, self.address, self.agent = port, address, agent
        self.headers = headers or {}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` as JSON from this browser's address and return the envelope (which must succeed)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                                source_address=(self.address, 0))
        try:
            connection.request("POST", path, body=json.dumps(body).encode(), headers={
                "Content-Type": "application/json", "User-Agent": self.agent, **self.headers})
            response = connection.getresponse()
            envelope = json.loads(response.read())
        finally:
            connection.close()
        assert response.status == 200, envelope
        return envelope

    def generate(self, type_: int, prompts: dict[str, Any]) -> dict[str, Any]:
        """Send a generation as the client does: no username."""
        return self.post("/generate", {"appid": 0, "type": type_, "prompts": prompts})


def researcher(port: int, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=10, **kwargs)


def newest(port: int) -> dict[str, Any]:
    """Return the newest generation record, whole."""
    summary = researcher(port, "/generations?limit=1").json()["data"]["items"][0]
    return researcher(port, f"/generations/{summary['_id']}").json()["data"]


def record(port: int, record_id: str) -> dict[str, Any]:
    return researcher(port, f"/generations/{record_id}").json()["data"]


def listed(port: int, username: str) -> set[str]:
    return {item["_id"] for item in researcher(port, f"/generations?username={username}&limit=100")
            .json()["data"]["items"]}


def test_two_participants_and_two_sharing_a_machine_through_the_real_clients_flow(live):
    app, port = live
    browsers = {"ana": Browser(port, "127.0.0.2", "Mozilla/5.0 (ana's laptop)"),
                "ben": Browser(port, "127.0.0.3", "Mozilla/5.0 (ben's laptop)"),
                "cai": Browser(port, "127.0.0.4", "Mozilla/5.0 (lab machine 4)"),
                "dee": Browser(port, "127.0.0.4", "Mozilla/5.0 (lab machine 4)")}
    notes = {name: ([f"{name} 可折叠", "带计数"], [f"{name} 发光"]) for name in browsers}
    schemes = {name: (drawn(f"{name}-1", notes[name][0]), drawn(f"{name}-2", notes[name][1])) for name in browsers}
    expected: dict[str, str | None] = {}  # record id -> the participant it must end with (None: ambiguous)
    for name, browser in browsers.items():
        browser.post("/paint/start", {"username": name})
        browser.post("/paint/save", save_body(name, task=TASK))
    for name, browser in browsers.items():
        first, second = schemes[name]
        for _ in range(2):  # the client asks for cards twice once the task is set
            browser.generate(0, {"task": TASK, "num": 1})
            expected[newest(port)["_id"]] = None if name in ("cai", "dee") else name
        browser.post("/paint/save", save_body(name, rapid=[first]))
        browser.generate(1, {"designTask": TASK, "designTexts": notes[name][0], "designImage": first["canvasImage"],
                             "schemeId": 0})
        expected[newest(port)["_id"]] = name
        # The client sometimes exports a sketch for /generate before it saves it.
        browser.generate(1, {"designTask": TASK, "designTexts": notes[name][1], "designImage": second["canvasImage"],
                             "schemeId": 1})
        early = newest(port)
        expected[early["_id"]] = name
        if name in ("cai", "dee"):
            assert early["participant"]["method"] == "ambiguous"
            assert early["participant"]["candidates"] == ["cai", "dee"] and early["participant"]["username"] is None
        else:
            assert (early["participant"]["username"], early["participant"]["method"]) == (name, "client")
        browser.post("/paint/save", save_body(name, rapid=[first, second]))
        assert record(port, early["_id"])["participant"]["method"] == "sketch"  # the save settled it
        browser.generate(2, {"designTask": TASK, "selectNum": 1, "schemes": [
            {"designTexts": notes[name][0], "designImage": first["canvasImage"]},
            {"designTexts": notes[name][1], "designImage": second["canvasImage"]}]})
        expected[newest(port)["_id"]] = name
        browser.generate(3, {"selectedSchemes": [{"designTexts": notes[name][0]}], "num": 1})
        expected[newest(port)["_id"]] = name

    methods = {}
    for record_id, name in expected.items():
        found = record(port, record_id)
        assert found["username"] is None  # the client sent none
        assert found["participant"]["username"] == name, (found["type"], found["participant"])
        methods[record_id] = found["participant"]["method"]
        if name is None:
            assert found["participant"]["candidates"] == ["cai", "dee"]
    for name in browsers:
        assert listed(port, name) == {rid for rid, owner in expected.items() if owner == name}
    by_type = {}
    for record_id, method in methods.items():
        by_type.setdefault(record(port, record_id)["type"], set()).add(method)
    # Type 0 carries the task and the client only; 1 and 2 a sketch; 3 the notes of one.
    assert by_type == {0: {"client", "ambiguous"}, 1: {"sketch"}, 2: {"sketch"}, 3: {"texts"}}


def test_a_username_in_the_body_wins_over_any_evidence(live):
    app, port = live
    ana = Browser(port, "127.0.0.2", "ua")
    ana.post("/paint/start", {"username": "ana"})
    ana.post("/generate", {"appid": 0, "type": 0, "username": "zoe", "prompts": {"task": TASK, "num": 1}})
    found = newest(port)
    assert found["username"] == "zoe"
    assert found["participant"] == {"username": "zoe", "method": "username", "candidates": ["zoe"], "evidence": [
        {"method": "username", "candidates": ["zoe"], "detail": "sent in the request body"}]}


def test_a_client_seen_outside_the_window_is_no_evidence(live, database_of):
    app, port = live
    ana = Browser(port, "127.0.0.2", "ua")
    ana.post("/paint/start", {"username": "ana"})
    ana.generate(0, {"task": TASK, "num": 1})
    assert newest(port)["participant"]["username"] == "ana"
    long_ago = datetime.now(timezone.utc) - timedelta(seconds=app.config["ATTRIBUTION_WINDOW"] + 60)
    database_of(app)[CLIENTS].update_one({"_id": "ana"}, {"$set": {"at": long_ago}})
    ana.generate(0, {"task": TASK, "num": 1})
    assert newest(port)["participant"] == {"username": None, "method": "none", "candidates": [], "evidence": []}
    # Another User-Agent at the same address is another client.
    Browser(port, "127.0.0.2", "other").generate(0, {"task": TASK, "num": 1})
    assert newest(port)["participant"]["method"] == "none"


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client(make_gen_app):
    app = make_gen_app(TRUSTED_PROXIES=1)
    client = app.test_client()
    proxied = {"REMOTE_ADDR": "127.0.0.1"}
    for name, address in (("ana", "10.0.0.2"), ("ben", "10.0.0.3")):
        client.post("/paint/start", json={"username": name}, environ_base=proxied,
                    headers={"X-Forwarded-For": address, "User-Agent": "same browser"})
    client.post("/generate", json={"appid": 0, "type": 0, "prompts": {"task": TASK, "num": 1}},
                environ_base=proxied, headers={"X-Forwarded-For": "10.0.0.3", "User-Agent": "same browser"})
    summary = client.get("/generations", environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_json()["data"]["items"][0]
    assert summary["participant"]["username"] == "ben"
    assert summary["participant"]["evidence"][0]["detail"].startswith("their last start or save came from 10.0.0.3")


def _ev(method: str, *names: str) -> Evidence:
    return Evidence(method=method, candidates=list(names), detail="")


@pytest.mark.parametrize(("evidence", "username", "method", "candidates"), [
    ([], None, "none", []),
    ([_ev("client", "a")], "a", "client", ["a"]),
    ([_ev("client", "a", "b")], None, "ambiguous", ["a", "b"]),
    # Stronger evidence resolves what a shared machine leaves open.
    ([_ev("sketch", "a"), _ev("client", "a", "b")], "a", "sketch", ["a"]),
    # A blank canvas is in everyone's saves: the client narrows it, and decides.
    ([_ev("sketch", "a", "b"), _ev("client", "b", "c")], "b", "client", ["b"]),
    # Weaker evidence that disagrees is passed over, not mixed in.
    ([_ev("sketch", "a"), _ev("client", "b")], "a", "sketch", ["a"]),
    ([_ev("texts", "a", "b"), _ev("client", "c"), _ev("task", "b", "c")], "b", "task", ["b"]),
    ([_ev("texts", "a", "b"), _ev("task", "a", "b")], None, "ambiguous", ["a", "b"]),
])
def test_the_evidence_is_weighed_strongest_first(evidence, username, method, candidates):
    found = weigh(evidence)
    assert (found.username, found.method, found.candidates) == (username, method, candidates)
    assert found.evidence == evidence


def test_a_researcher_sets_the_participant_by_hand_and_no_save_changes_it(make_gen_app, database_of):
    app = make_gen_app(API_TOKEN=TOKEN)
    client, auth = app.test_client(), {"Authorization": f"Bearer {TOKEN}"}
    client.post("/paint/start", json={"username": "ana"})
    client.post("/generate", json={"appid": 0, "type": 1, "prompts": {
        "designTask": TASK, "designTexts": ["x"], "designImage": sketch("s"), "schemeId": 0}})
    record_id = client.get("/generations", headers=auth).get_json()["data"]["items"][0]["_id"]
    path = f"/generations/{record_id}/participant"
    assert client.put(path, json={"username": "ben"}).status_code == 401
    answer = client.put(path, json={"username": "ben"}, headers=auth).get_json()
    assert answer["data"]["method"] == "manual" and answer["data"]["username"] == "ben"
    # ana's save holds the sketch now, which would say ana: the researcher's word stands.
    client.post("/paint/save", json=save_body("ana", rapid=[drawn("s", ["x"])]))
    stored = client.get(f"/generations/{record_id}", headers=auth).get_json()["data"]["participant"]
    assert (stored["username"], stored["method"]) == ("ben", "manual")
    assert {item["_id"] for item in client.get("/generations?username=ben", headers=auth)
            .get_json()["data"]["items"]} == {record_id}
    # null gives it back to the evidence.
    back = client.put(path, json={"username": None}, headers=auth).get_json()["data"]
    assert (back["username"], back["method"]) == ("ana", "sketch")


@pytest.mark.parametrize(("path", "body", "status", "says"), [
    ("/generations/0123456789abcdef01234567/participant", {"username": "ana"}, 404, "no generation"),
    ("/generations/nonsense/participant", {"username": "ana"}, 400, "record"),
    ("/generations/0123456789abcdef01234567/participant", {}, 400, "username"),
    ("/generations/0123456789abcdef01234567/participant", {"username": 7}, 400, "username"),
])
def test_setting_a_participant_refuses_bad_input(client, db, path, body, status, says):
    response = client.put(path, json=body)
    assert response.status_code == status
    assert says in response.get_json()["message"]
    assert db.generations.count_documents({}) == 0


def test_records_written_before_attribution_are_attributed_by_their_username(make_app, database_of):
    app = make_app()
    db = database_of(app)
    db.generations.insert_many([
        {"createdAt": datetime.now(timezone.utc), "appid": 0, "type": 0, "username": "ana", "status": "ok"},
        {"createdAt": datetime.now(timezone.utc), "appid": 0, "type": 0, "username": None, "status": "ok"}])
    again = make_app(MONGO_DB=app.config["MONGO_DB"])  # a server of this version starting on that data
    items = again.test_client().get("/generations").get_json()["data"]["items"]
    assert sorted((i["participant"]["username"] or "", i["participant"]["method"]) for i in items) == [
        ("", "none"), ("ana", "username")]
    assert Attribution.model_validate(items[0]["participant"])


def test_the_command_marks_saves_older_than_attribution_and_attributes_again(make_gen_app, database_of):
    app = make_gen_app()
    client, db = app.test_client(), database_of(app)
    client.post("/paint/start", json={"username": "ana"})
    client.post("/paint/save", json=save_body("ana", rapid=[drawn("old", ["旧的"])], deep=[drawn("another", [])]))
    db.attribution_marks.delete_many({})  # as if saved by a server older than attribution
    db.attribution_clients.delete_many({})
    client.post("/generate", json={"appid": 0, "type": 1, "prompts": {
        "designTask": TASK, "designTexts": [], "designImage": sketch("old"), "schemeId": 0}})
    client.post("/generate", json={"appid": 0, "type": 3, "prompts": {
        "selectedSchemes": [{"designTexts": ["旧的"]}], "num": 1}})
    assert {r["participant"]["method"] for r in db.generations.find()} == {"none"}
    result = app.test_cli_runner().invoke(args=["attribute-generations"])
    assert result.exit_code == 0, result.output
    assert "2 generations changed" in result.output
    assert sorted((r["type"], r["participant"]["username"], r["participant"]["method"])
                  for r in db.generations.find()) == [(1, "ana", "sketch"), (3, "ana", "texts")]


def test_a_save_that_lands_while_the_record_is_written_still_attributes_it(make_gen_app, database_of, monkeypatch):
    """The save marks the sketch and looks for records after the record was weighed, before it was stored."""
    from apps import attribution, records

    app = make_gen_app()
    client, db = app.test_client(), database_of(app)
    client.post("/paint/start", json={"username": "ana"}, environ_base={"REMOTE_ADDR": "127.0.0.9"})
    weigh_first = attribution.attribute
    seen = []

    def weighed_then_saved(database, clues):
        found = weigh_first(database, clues)
        if not seen:  # the first weighing, before the insert: now the save's marks land, and its search
            seen.append(found)
            marks = attribution.Marks(sketches=clues.sketches)
            attribution.mark(database, "ana", marks)
            assert records.reattribute(database, marks) == 0  # nothing stored yet to update
        return found

    monkeypatch.setattr(attribution, "attribute", weighed_then_saved)
    client.post("/generate", json={"appid": 0, "type": 1, "prompts": {
        "designTask": TASK, "designTexts": [], "designImage": sketch("race"), "schemeId": 0}})
    assert seen[0].method == "none"
    stored = db.generations.find_one()["participant"]
    assert (stored["username"], stored["method"]) == ("ana", "sketch")
