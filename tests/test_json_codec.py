"""core.json_codec: bodies read as the standard library reads them, answers in one format."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from bson import ObjectId

from core.envelope import BadInput
from core.json_codec import JSONText, dumps, dumps_parts, iso_utc, read_body
from tests.helpers import save_body, scheme

JSON = "application/json"


@pytest.mark.parametrize("moment,text", [
    (datetime(2026, 12, 1, 19, 52, 58, 805123), "2026-12-01T19:52:58.805Z"),  # naive: UTC, as the store gives it
    (datetime(2026, 12, 1, 19, 52, 58, tzinfo=timezone.utc), "2026-12-01T19:52:58.000Z"),
    (datetime(2026, 12, 2, 3, 52, 58, 1000, tzinfo=timezone(timedelta(hours=8))), "2026-12-01T19:52:58.001Z"),
])
def test_one_time_format(moment, text):
    assert iso_utc(moment) == text
    assert dumps({"at": moment}) == f'{{"at":"{text}"}}'.encode()


def test_answers_keep_order_and_utf8_and_write_ids_as_hex(app):
    oid = ObjectId()
    with app.test_request_context():
        response = app.json.response({"z": 1, "名字": "准备", "_id": oid, "a": [1.5, -0.0, 2**53]})
    assert response.get_data() == f'{{"z":1,"名字":"准备","_id":"{oid}","a":[1.5,-0.0,9007199254740992]}}\n'.encode()


def test_json_text_goes_into_answers_as_a_part_of_its_own():
    image = b"iVBORw0KGgo="
    value = {"a": [JSONText(b'"data:image/png;base64,', image, b'"'), {"b": JSONText(b"[1,2.5e-07]")}], "nul": "\x00"}
    parts = dumps_parts(value, newline=True)
    assert parts[2] is image
    assert b"".join(parts) == b'{"a":["data:image/png;base64,iVBORw0KGgo=",{"b":[1,2.5e-07]}],"nul":"\\u0000"}\n'
    assert dumps_parts({"plain": 1}) == [b'{"plain":1}']


def test_what_orjson_cannot_write_is_written_as_flask_did():
    assert dumps({"big": 2**70, 1: "one"}) == b'{"big":1180591620717411303424,"1":"one"}'
    assert dumps([datetime(2026, 1, 1), 2**64], newline=True) == b'["2026-01-01T00:00:00.000Z",18446744073709551616]\n'


def test_history_times_are_in_the_one_format(client):
    client.post("/paint/start", json={"username": "alice"})
    client.post("/paint/save", json=save_body("alice", rapid=[scheme("a")]))
    saved_at = client.get("/paint/history?username=alice").get_json()["data"]["saves"][0]["savedAt"]
    assert saved_at.endswith("Z") and len(saved_at) == len("2026-12-01T19:52:58.805Z")


@pytest.mark.parametrize("raw", [
    b'{"n": 1180591620717411303424, "m": -9223372036854775809, "f": 1e19, "g": 0.1, "z": -0.0}',
    b'\xef\xbb\xbf{"n": 18446744073709551616}',  # a BOM, as the server always allowed
    b'{"x": 1e400}',  # jiter and the standard library both read infinity, for the checks to refuse
    b'{"deep": ' + b"[" * 300 + b"]" * 300 + b"}",  # deeper than jiter goes: the standard library reads it
    '{"text": "\\u00e9\\ud83d\\ude00 可折叠", "k": {"a": 1, "a": 2}}'.encode(),
])
def test_bodies_are_read_to_what_the_standard_library_reads(app, raw):
    with app.test_request_context(data=raw, content_type=JSON):
        assert repr(read_body()) == repr(json.loads(raw.decode("utf-8-sig")))


@pytest.mark.parametrize("raw,message", [
    (b'{"a": NaN}', "body: is not valid JSON: NaN is not a JSON number"),
    (b'{"a": "\\udc00"}', "body: holds a lone surrogate escape"),
    (b'{"a": "\xed\xa0\x80"}', "body: is not valid JSON: it must be UTF-8 text"),
    (b"[" * 2000 + b"]" * 2000, "body: is not valid JSON"),
    (b"[1]", "body: must be a JSON object"),
])
def test_bodies_are_refused_as_they_always_were(app, raw, message):
    with app.test_request_context(data=raw, content_type=JSON), pytest.raises(BadInput) as refused:
        read_body()
    assert refused.value.message.startswith(message)


@pytest.mark.parametrize("value,accepted", [
    (1e19, True), (-1.5e300, True), (2**63 - 1, True), (-(2**63), True),
    (2**63, False), (2**64, False), (-(2**63) - 1, False), (10**30, False),
])
def test_large_numbers_in_schemes_are_judged_on_their_exact_value(client, db, value, accepted):
    client.post("/paint/start", json={"username": "numbers"})
    response = client.post("/paint/save", data=json.dumps(save_body("numbers", rapid=[{"v": [value]}])),
                           content_type=JSON)
    if accepted:
        assert response.status_code == 200
        stored = client.post("/paint/start", json={"username": "numbers"}).get_json()["data"]
        assert repr(stored["rapidDivergenceSchemes"][0]["v"][0]) == repr(value)
    else:
        assert response.status_code == 400
        assert response.get_json()["message"] == ("data.designSchemes.快速发散[0].v[0]: "
                                                  "is an integer too large to store (64-bit limit)")
