"""The optional bearer token and CORS for the browser client."""
from __future__ import annotations

import pytest

TOKEN = "s3cret-token"


@pytest.fixture
def locked(make_app):
    """A client of an app that requires API_TOKEN."""
    return make_app(API_TOKEN=TOKEN).test_client()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_token_required_when_set(locked, headers):
    response = locked.post("/paint/start", json={"username": "alice"}, headers=headers)
    assert response.status_code == 401
    body = response.get_json()
    assert body["success"] is False and "token" in body["message"]
    assert TOKEN not in response.get_data(as_text=True)


def test_right_token_passes(locked):
    response = locked.post("/paint/start", json={"username": "alice"},
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


def test_ping_is_open_even_with_token(locked):
    assert locked.get("/ping").get_data(as_text=True) == "pong"


def test_unknown_route_needs_the_token_too(locked):
    assert locked.get("/nope").status_code == 401


def test_no_token_configured_means_open(client):
    assert client.post("/paint/start", json={"username": "alice"}).status_code == 200


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
