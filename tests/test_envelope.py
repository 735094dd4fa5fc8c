"""Every answer is in the envelope: routing errors, 413, bugs; and /ping."""
from __future__ import annotations

import pytest

ENVELOPE = {"success", "data", "code", "message"}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_ping_answers_pong(client, method):
    response = client.open("/ping", method=method)
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "pong"
    assert response.mimetype == "text/plain"


@pytest.mark.parametrize("path", ["/nope", "/paint", "/paint/start/extra", "/generate/x"])
def test_unknown_route_is_404_envelope(client, path):
    response = client.post(path, json={})
    assert response.status_code == 404
    body = response.get_json()
    assert set(body) == ENVELOPE and body["success"] is False and body["code"] == 1
    assert path in body["message"]


@pytest.mark.parametrize("method,path", [("GET", "/paint/start"), ("PUT", "/paint/save"), ("DELETE", "/ping")])
def test_wrong_method_is_405_envelope(client, method, path):
    response = client.open(path, method=method)
    assert response.status_code == 405
    body = response.get_json()
    assert set(body) == ENVELOPE and body["success"] is False
    assert method in body["message"]
    assert "POST" in response.headers["Allow"] or "GET" in response.headers["Allow"]


@pytest.mark.parametrize("path", ["/generations/", "/ping/", "/docs/assets/"])
def test_a_trailing_slash_is_not_redirected(client, path):
    assert client.get(path).status_code == 404 and set(client.get(path).get_json()) == ENVELOPE


def test_no_route_ends_with_a_slash(app):
    # Werkzeug would answer the path without it with a 308 redirect, which is not in the envelope.
    assert [rule.rule for rule in app.url_map.iter_rules() if rule.rule.endswith("/")] == []


def test_default_body_limit_is_32_mb(app):
    assert app.config["MAX_CONTENT_LENGTH"] == 32 * 1024 * 1024


def test_a_bug_is_500_without_traceback(app):
    @app.get("/boom-for-test")
    def boom():
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom-for-test")
    assert response.status_code == 500
    body = response.get_json()
    assert set(body) == ENVELOPE and body["success"] is False
    text = response.get_data(as_text=True)
    assert "secret internals" not in text and "Traceback" not in text


def test_chinese_is_sent_as_utf8(client):
    client.post("/paint/start", json={"username": "王五"})
    raw = client.post("/paint/start", json={"username": "王五"}).get_data()
    assert "准备".encode() in raw
