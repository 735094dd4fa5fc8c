"""The participant register: kept by `flask participants`, enforced while PARTICIPANT_REGISTER is on."""
from __future__ import annotations

import pytest

from apps.paint.register import COLLECTION
from tests.helpers import PROMPTS, body, save_body, scheme


def participants(app, *args: str):
    """Run `flask participants ARGS` against `app` and return the result."""
    return app.test_cli_runner().invoke(args=["participants", *args])


@pytest.fixture
def study(make_gen_app):
    """An app with the register on, and alice and 王小明 in it."""
    app = make_gen_app(PARTICIPANT_REGISTER=True)
    assert participants(app, "add", "alice", "王小明").exit_code == 0
    return app


def _refusal(response, name: str) -> None:
    assert response.status_code == 403
    assert response.get_json() == {"success": False, "data": None, "code": 1, "message":
                                   f"username: {name!r} is not registered for this study; ask the researcher "
                                   "to register it"}


def test_an_unregistered_name_is_refused_and_no_participant_is_made(study, database_of):
    _refusal(study.test_client().post("/paint/start", json={"username": "mallory"}), "mallory")
    assert database_of(study).participants.count_documents({}) == 0


def test_a_registered_name_takes_part_however_the_client_spells_it(study):
    client = study.test_client()
    assert client.post("/paint/start", json={"username": " alice"}).status_code == 200
    assert client.post("/paint/save", json=save_body("alice ", rapid=[scheme("a")])).status_code == 200
    assert client.post("/paint/start", json={"username": "王小明"}).status_code == 200


def test_a_removed_name_can_no_longer_save(study):
    client = study.test_client()
    client.post("/paint/start", json={"username": "alice"})
    result = participants(study, "remove", "alice", "nobody")
    assert result.exit_code == 0 and result.output == "removed 1 name(s): alice\n"
    _refusal(client.post("/paint/save", json=save_body("alice", rapid=[scheme("a")])), "alice")


def test_generate_checks_a_username_when_one_is_given(study):
    client = study.test_client()
    _refusal(client.post("/generate", json=body(2, PROMPTS[2], username="mallory")), "mallory")
    assert client.post("/generate", json=body(2, PROMPTS[2], username="alice")).status_code == 200
    assert client.post("/generate", json=body(2, PROMPTS[2], username=None)).status_code == 200  # the web client


def test_the_commands_read_names_as_the_api_does(make_app, database_of):
    app = make_app()
    added = participants(app, "add", " bob", "bob", "e\u0301milie")
    assert added.exit_code == 0
    assert added.output.splitlines()[0] == "registered 2 new name(s): bob, \u00e9milie"
    assert "PARTICIPANT_REGISTER is off" in added.output  # the note, on stderr
    assert participants(app, "add", "bob").output.startswith("registered 0 new name(s)\n")
    listed = participants(app, "list")
    assert listed.output.splitlines()[:2] == ["bob", "\u00e9milie"]
    assert sorted(doc["_id"] for doc in database_of(app)[COLLECTION].find()) == ["bob", "\u00e9milie"]


def test_a_name_the_api_would_refuse_is_not_registered(make_app, database_of):
    app = make_app()
    result = participants(app, "add", "carol", "\u202eadmin")
    assert result.exit_code == 1
    assert "username: must not contain control, invisible or direction characters" in result.output
    assert database_of(app)[COLLECTION].count_documents({}) == 0  # names are checked before any is written


def test_with_the_register_off_anyone_takes_part(client):
    assert client.post("/paint/start", json={"username": "mallory"}).status_code == 200
