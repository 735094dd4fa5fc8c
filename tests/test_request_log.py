"""One access line per request, with the request id also in the response."""
from __future__ import annotations

import json
import logging

import pytest

from core.logs import FIELDS, JSONFormatter


def _lines(caplog):
    return [getattr(r, FIELDS) for r in caplog.records if r.name == "refinity.access"]


def test_each_request_logs_one_json_line(client, caplog):
    caplog.set_level(logging.INFO, logger="refinity.access")
    # None of these can appear by chance inside a hex request id.
    response = client.post("/paint/start?secret=query-secret", json={"username": "alice"},
                           headers={"Authorization": "Bearer tok-123"})
    (line,) = _lines(caplog)
    assert line["route"] == "/paint/start" and line["status"] == 200 and line["method"] == "POST"
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["duration_ms"] >= 0
    text = json.dumps(line)
    assert "query-secret" not in text and "tok-123" not in text and "alice" not in text


def test_an_access_line_is_one_json_object_with_its_fields_at_the_top(client, caplog):
    caplog.set_level(logging.INFO, logger="refinity.access")
    client.get("/ping", headers={"X-Request-ID": "trace-7"})
    (record,) = [r for r in caplog.records if r.name == "refinity.access"]
    line = json.loads(JSONFormatter().format(record))
    assert line["logger"] == "refinity.access" and line["level"] == "INFO" and line["message"] == "GET /ping 200"
    assert line["request_id"] == "trace-7" and line["route"] == "/ping" and line["time"].endswith("Z")


def test_a_sane_incoming_request_id_is_kept(client):
    assert client.get("/ping", headers={"X-Request-ID": "trace-42"}).headers["X-Request-ID"] == "trace-42"


@pytest.mark.parametrize("incoming", ["has space", "x" * 65, "<script>"])
def test_an_odd_incoming_request_id_is_replaced(client, incoming):
    assert client.get("/ping", headers={"X-Request-ID": incoming}).headers["X-Request-ID"] != incoming


def test_unmatched_routes_are_logged_without_their_path(client, caplog):
    caplog.set_level(logging.INFO, logger="refinity.access")
    client.get("/some/user-supplied/path")
    (line,) = _lines(caplog)
    assert line["route"] == "<unmatched>" and line["status"] == 404

