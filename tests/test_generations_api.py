"""GET /generations, /generations/<id> and /images/<sha256> over the real wire store.

Records are written by the real Recorder (with a stub app), so listing sees exactly the
documents that POST /generate writes; tests/test_generate_api.py covers the full path.
"""
from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from pydantic import BaseModel

from agent.errors import BackendError, step_context
from apps.records import COLLECTION, GenerationCall, RecordError, Recorder, status_of
from core.image_store import AnswerImage, SketchImage, decode_image, put_image
from tests.helpers import PNG_1PX

IMMUTABLE = "public, max-age=31536000, immutable"


class StubPrompts(BaseModel):
    """The prompts of a minimal generation app."""

    n: int


class StubAnswer(BaseModel):
    """Its answer."""

    ok: bool


def failed_in(step):
    """Return a BackendError as a pipeline step raises it."""
    with pytest.raises(BackendError) as caught, step_context(step):
        raise BackendError("simulated outage")
    return caught.value


def record(db, *, type_=0, username="alice", fail=False, when=None):
    """Write one record as the Recorder builds it and return its id as a string.

    `when` pins createdAt, since records made within one millisecond tie (and nx-27017
    stores a datetime written by $set as a string, so it is set before the insert).
    """
    recorder = Recorder(db, GenerationCall(0, type_, username, None, StubPrompts(n=1)))
    recorder.trace.llm(step="s.one", prompt="p", raw="a#b", items=["a", "b"])
    error = failed_in("s.two") if fail else None
    if error is None:
        recorder.result = StubAnswer(ok=True)
    doc = recorder.stored(status_of(error), RecordError.of(error)).document
    if when is not None:
        doc["createdAt"] = when
    db[COLLECTION].insert_one(doc)
    return str(recorder.record_id)


@pytest.fixture
def seeded(db):
    """Write 7 records a second apart: alice types 0,1,0,1,0; bob type 2 (failed); anonymous type 3."""
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    specs = [("alice", 0), ("alice", 1), ("alice", 0), ("alice", 1), ("alice", 0), ("bob", 2), (None, 3)]
    ids = [record(db, username=u, type_=t, fail=u == "bob", when=start + timedelta(seconds=i))
           for i, (u, t) in enumerate(specs)]
    return ids  # oldest first


def items(response):
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]["items"]


def test_list_is_newest_first_with_summaries(client, seeded):
    got = items(client.get("/generations"))
    assert [g["_id"] for g in got] == seeded[::-1]
    first = got[0]
    assert set(first) == {"_id", "createdAt", "startedAt", "finishedAt", "durationMs", "appid", "type",
                          "username", "participant", "status", "error"}
    assert first["createdAt"] == "2030-01-01T00:00:06.000Z" and first["username"] is None


@pytest.mark.parametrize("query,expected", [
    ("username=alice", [4, 3, 2, 1, 0]),
    ("username=bob", [5]),
    ("type=0", [4, 2, 0]),
    ("username=alice&type=1", [3, 1]),
    ("username=carol", []),
])
def test_list_filters(client, seeded, query, expected):
    assert [g["_id"] for g in items(client.get(f"/generations?{query}"))] == [seeded[i] for i in expected]


def test_failed_record_is_listed_with_its_error(client, seeded):
    (bob,) = items(client.get("/generations?username=bob"))
    assert bob["status"] == "failed"
    assert bob["error"] == {"step": "s.two", "message": "s.two: simulated outage", "kind": "BackendError",
                           "code": 2}


def test_pages_follow_the_next_cursor_to_the_end(client, seeded):
    seen, url = [], "/generations?limit=3"
    while url:
        data = client.get(url).get_json()["data"]
        assert len(data["items"]) <= 3
        seen += [g["_id"] for g in data["items"]]
        url = f"/generations?limit=3&before={data['next']}" if data["next"] else None
    assert seen == seeded[::-1]


def test_page_cursor_breaks_ties_of_equal_times(client, db):
    moment = datetime(2031, 5, 5, tzinfo=timezone.utc)
    ids = [record(db, when=moment) for _ in range(5)]
    first = client.get("/generations?limit=2").get_json()["data"]
    rest = client.get(f"/generations?before={first['next']}").get_json()["data"]
    listed = [g["_id"] for g in first["items"] + rest["items"]]
    assert sorted(listed) == sorted(ids) and len(set(listed)) == 5 and rest["next"] is None


def test_before_accepts_an_iso_time(client, seeded):
    got = items(client.get("/generations?before=2030-01-01T00:00:02Z"))
    assert [g["_id"] for g in got] == [seeded[1], seeded[0]]
    naive = items(client.get("/generations?before=2030-01-01T00:00:01"))  # read as UTC
    assert [g["_id"] for g in naive] == [seeded[0]]


def test_limit_bounds(client, db, seeded):
    assert len(items(client.get("/generations?limit=1"))) == 1
    assert len(items(client.get("/generations?limit=100"))) == 7
    for _ in range(21):
        record(db)
    assert len(items(client.get("/generations"))) == 20  # the default


@pytest.mark.parametrize("query,field", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=abc", "limit"), ("limit=", "limit"),
    ("type=-1", "type"), ("type=x", "type"),
    ("username=", "username"),
    ("before=yesterday", "before"), ("before=ffffffffffffffffffffffff", "before"),
    ("user=alice", "user"),
])
def test_bad_list_params_are_400_naming_the_param(client, seeded, query, field):
    response = client.get(f"/generations?{query}")
    body = response.get_json()
    assert response.status_code == 400
    assert body["success"] is False and body["code"] == 1 and body["data"] is None
    assert body["message"].startswith(f"{field}:")


def test_get_one_record_as_json(client, seeded):
    response = client.get(f"/generations/{seeded[5]}")
    doc = response.get_json()["data"]
    assert response.status_code == 200 and doc["_id"] == seeded[5]
    assert doc["createdAt"] == "2030-01-01T00:00:05.000Z" and doc["finishedAt"].endswith("Z")
    assert doc["input"] == {"n": 1} and doc["result"] is None and doc["status"] == "failed"
    # A record stored before LLM steps kept their protocol and checks reads with those fields empty;
    # an entry whose caller said not when it began has no start, only the moment it was recorded.
    finished = doc["steps"][0].pop("finished")
    assert isinstance(finished, float) and 0 <= finished < 60
    assert doc["steps"] == [{"kind": "llm", "step": "s.one", "template": None, "prompt": "p", "images": [],
                             "raw": "a#b", "items": ["a", "b"], "deployment": None, "latency": None,
                             "retries": 0, "attempt": 1, "reason": None, "protocol": None, "finishReason": None,
                             "maxTokens": None, "usage": None, "checks": [], "failed": [], "error": None,
                             "started": None}]


@pytest.mark.parametrize("record_id,status", [("not-an-id", 400), ("0" * 23, 400), ("0" * 24, 404)])
def test_get_one_bad_or_unknown_id(client, record_id, status):
    response = client.get(f"/generations/{record_id}")
    body = response.get_json()
    assert response.status_code == status and body["success"] is False and body["data"] is None


def test_image_is_served_with_immutable_caching(client, db):
    key = put_image(db, decode_image(PNG_1PX))
    response = client.get(f"/images/{key}")
    assert response.status_code == 200
    assert response.data == base64.b64decode(PNG_1PX)
    assert hashlib.sha256(response.data).hexdigest() == key
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Cache-Control"] == IMMUTABLE
    assert response.headers["ETag"] == f'"{key}"'
    again = client.get(f"/images/{key.upper()}", headers={"If-None-Match": f'"{key}"'})
    assert again.status_code == 304 and again.data == b""


@pytest.mark.parametrize("key,status", [("abc", 400), ("g" * 64, 400), ("0" * 65, 400), ("0" * 64, 404)])
def test_bad_or_unknown_image_hash(client, db, key, status):
    response = client.get(f"/images/{key}")
    body = response.get_json()
    assert response.status_code == status
    assert body["success"] is False and body["code"] == 1 and body["data"] is None
    assert "Cache-Control" not in response.headers or response.headers["Cache-Control"] != IMMUTABLE


class SketchPrompts(BaseModel):
    """Prompts carrying a sketch, as type 1 does."""

    designImage: SketchImage


class PictureAnswer(BaseModel):
    """An answer carrying a generated image."""

    result: list[dict[str, AnswerImage]]


def test_recorder_stores_images_by_reference(client, db):
    image = decode_image(PNG_1PX)
    prompts = SketchPrompts.model_validate({"designImage": f"data:image/png;base64,{PNG_1PX}"})
    recorder = Recorder(db, GenerationCall(0, 1, None, None, prompts))
    with recorder:
        recorder.trace.image(step="x.images[0]", payload={"prompt": "p"}, image=image, error=None)
        recorder.result = PictureAnswer(result=[{"image": image}])
    doc = db[COLLECTION].find_one({"_id": recorder.record_id})
    ref = {"sha256": image.sha256, "contentType": "image/png"}
    assert doc["input"]["designImage"] == ref
    assert doc["steps"][0]["image"] == ref and doc["steps"][0]["payload"] == {"prompt": "p"}
    assert doc["result"] == {"result": [{"image": ref}]}
    assert len(list(db["fs.files"].find({"_id": image.sha256}))) == 1  # stored once, referred to thrice
    assert client.get(f"/images/{image.sha256}").status_code == 200
