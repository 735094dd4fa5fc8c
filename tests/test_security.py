"""The researcher token, the participant routes that never need it, and CORS for the browser client.

Which route is on which surface, and each surface's guard over every route, is
tests/test_auth_all_routes.py; this is the token and the client's own calls.
"""
from __future__ import annotations

import pytest

from config import from_env

TOKEN = "s3cret-token"


@pytest.fixture
def locked(make_app):
    """A client of an app that has a researcher token."""
    return make_app(API_TOKEN=TOKEN).test_client()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_researcher_routes_need_the_token_when_set(locked, headers):
    response = locked.get("/paint/history", query_string={"username": "alice"}, headers=headers)
    assert response.status_code == 401
    body = response.get_json()
    assert body["success"] is False and "token" in body["message"]
    assert TOKEN not in response.get_data(as_text=True)


def test_right_token_passes(locked):
    locked.post("/paint/start", json={"username": "alice"})
    response = locked.get("/paint/history", query_string={"username": "alice"},
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


def test_the_web_client_needs_no_token_even_when_one_is_set(locked):
    # The unmodified client sends no Authorization header: a study can still set API_TOKEN.
    assert locked.post("/paint/start", json={"username": "alice"}).status_code == 200
    assert locked.get("/ping").get_data(as_text=True) == "pong"


def test_without_a_token_a_stranger_is_told_how_to_get_in(client):
    response = client.get("/generations", environ_base={"REMOTE_ADDR": "198.51.100.20"})
    assert response.status_code == 403
    assert response.get_json()["message"] == (
        "researcher routes answer only on the server's own machine while it has no API_TOKEN; "
        "set API_TOKEN on the server and send Authorization: Bearer <API_TOKEN>")


def test_a_participant_outside_allowed_clients_is_told_its_address(make_app):
    client = make_app(ALLOWED_CLIENTS=from_env({"ALLOWED_CLIENTS": "10.0.0.0/8"})["ALLOWED_CLIENTS"]).test_client()
    response = client.post("/paint/start", json={"username": "alice"}, environ_base={"REMOTE_ADDR": "198.51.100.20"})
    assert response.status_code == 403
    assert response.get_json()["message"] == ("the address 198.51.100.20 may not take part in this study: it is not "
                                              "in the server's ALLOWED_CLIENTS")
    inside = client.post("/paint/start", json={"username": "alice"}, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert inside.status_code == 200


def test_cors_allows_any_origin_by_default(client):
    response = client.post("/paint/start", json={"username": "a"}, headers={"Origin": "http://study.example"})
    assert response.headers["Access-Control-Allow-Origin"] in {"*", "http://study.example"}


def test_cors_preflight_with_allow_list(make_app):
    client = make_app(CORS_ORIGINS=["http://allowed.example"], API_TOKEN=TOKEN).test_client()
    preflight = {"Origin": "http://allowed.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    response = client.options("/paint/start", headers=preflight)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "http://allowed.example"
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()

    denied = client.options("/paint/start", headers={**preflight, "Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in denied.headers
