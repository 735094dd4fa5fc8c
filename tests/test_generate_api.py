"""POST /generate end to end: Flask test client, real wire store, simulators over loopback.

Checks every field the web client reads, the failures it must be told about, and the
record each generation leaves (failed ones too), with its images served by hash.
"""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time

import bson
import pytest
from werkzeug.serving import make_server

from simulators.chat import Scripted
from tests.helpers import (
    ITEM_KEYS, PROMPTS, RAPID_TWO, SKETCH, TASK, Sims, all_records, backend_settings, body, check_item, image_steps,
    wait_until,
)

ENVELOPE = {"success", "data", "code", "message"}
SEQUENCES = {0: (0, ["abstractImage", "abstractText"]),
             1: (2, ["abstractImage", "abstractText", "concreteText"])}


def check_data(type_, data):
    """Check what the client reads from a successful answer of `type_`."""
    if type_ == 2:
        assert len(data["names"]) == 3 and all(isinstance(n, str) and n for n in data["names"])
        assert len(data["selected"]) == 2 and set(data["selected"]) <= set(data["names"])
        return
    if type_ == 1:
        assert data["schemeId"] == 2
    if type_ in SEQUENCES:
        creative_type, kinds = SEQUENCES[type_]
        assert data["count"] == len(data["result"]) == (6 if type_ == 0 else 3)
        for creative in data["result"]:
            assert creative["type"] == creative_type and creative["displayType"] == "sequence"
            assert [item["type"] for item in creative["items"]] == kinds
            for item, kind in zip(creative["items"], kinds):
                check_item(item, kind)
        return
    assert list(data) == ["result"] and len(data["result"]) == 3
    for creative in data["result"]:
        assert creative["type"] == 4 and creative["displayType"] == "direct"
        (group,) = creative["items"]
        assert set(group) == ITEM_KEYS and group["type"] == "groupTypeTwo"
        assert group["text"] is None and group["image"] is None
        kinds = ["abstractImage", "concreteImage", "concreteText"]
        assert [item["type"] for item in group["combinations"]] == kinds
        for item, kind in zip(group["combinations"], kinds):
            check_item(item, kind)


def response_images(data):
    """Return the sha256 of every image in an answer, in order."""
    return [hashlib.sha256(base64.b64decode(v)).hexdigest()
            for v in _strings(data) if v.startswith("iVBORw0KGgo")]


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def refs(value):
    """Return the sha256 of every image reference in a stored value, in order."""
    if isinstance(value, dict):
        if set(value) == {"sha256", "contentType"}:
            return [value["sha256"]]
        return [key for item in value.values() for key in refs(item)]
    if isinstance(value, list):
        return [key for item in value for key in refs(item)]
    return []


@pytest.mark.parametrize("type_", [0, 1, 2, 3])
def test_each_type_answers_what_the_client_reads_and_is_recorded(gen_client, type_):
    response = gen_client.post("/generate", json=body(type_, PROMPTS[type_]))
    answer = response.get_json()
    assert response.status_code == 200 and set(answer) == ENVELOPE, answer
    assert answer["success"] is True and answer["code"] == 0 and answer["message"] == ""
    check_data(type_, answer["data"])

    listed = gen_client.get(f"/generations?username=alice&type={type_}").get_json()["data"]["items"]
    assert len(listed) == 1 and listed[0]["status"] == "succeeded" and listed[0]["error"] is None
    doc = gen_client.get(f"/generations/{listed[0]['_id']}").get_json()["data"]
    assert doc["appid"] == 0 and doc["type"] == type_ and doc["username"] == "alice"
    assert doc["durationMs"] >= 0 and doc["steps"] and all(s["kind"] in ("llm", "image") for s in doc["steps"])
    assert refs(doc["result"]) == response_images(answer["data"])  # cards map to stored images
    if type_ in (1, 2):
        sketch = hashlib.sha256(base64.b64decode(SKETCH.split(",", 1)[1])).hexdigest()
        assert sketch in refs(doc["input"])
    for key in set(refs(doc)):
        image = gen_client.get(f"/images/{key}")
        assert image.status_code == 200 and hashlib.sha256(image.data).hexdigest() == key


def test_username_is_optional(gen_client, gen_db):
    response = gen_client.post("/generate", json=body(2, PROMPTS[2], username=None))
    assert response.get_json()["success"] is True
    (doc,) = all_records(gen_db)
    assert doc["username"] is None


@pytest.mark.parametrize("sent,field", [
    ({"appid": 7, "type": 0}, "appid"),
    ({"appid": "0", "type": 0}, "appid"),
    ({"type": 0}, "appid"),
    ({"appid": 0, "type": 9}, "type"),
    ({"appid": 0, "type": True}, "type"),
    ({"appid": 0}, "type"),
])
def test_unknown_app_or_type_is_400_and_writes_nothing(gen_client, gen_db, sims, sent, field):
    response = gen_client.post("/generate", json={**sent, "prompts": PROMPTS[0]})
    answer = response.get_json()
    assert response.status_code == 400 and answer["code"] == 1 and answer["success"] is False
    assert answer["message"].startswith(f"{field}:") and answer["data"] is None
    assert all_records(gen_db) == [] and sims.chat.calls == 0


@pytest.mark.parametrize("sent,field", [
    (body(0, {"task": "t", "num": 0}), "prompts.num"),
    (body(0, {"num": 6}), "prompts.task"),
    (body(1, {**PROMPTS[1], "designImage": "data:image/png;base64,AAAA"}), "prompts.designImage"),
    (body(3, {"selectedSchemes": [], "num": 3}), "prompts.selectedSchemes"),
    ({"appid": 0, "type": 0, "prompts": "设计"}, "prompts"),
    (body(0, PROMPTS[0], username=""), "username"),
])
def test_bad_prompts_are_400_and_write_nothing(gen_client, gen_db, sims, sent, field):
    response = gen_client.post("/generate", json=sent)
    answer = response.get_json()
    assert response.status_code == 400 and answer["code"] == 1
    assert answer["message"].startswith(f"{field}:")
    assert all_records(gen_db) == [] and sims.chat.calls == 0


def test_gpt_down_mid_pipeline_is_503_naming_the_step_with_a_failed_record(gen_client, sims):
    sims.chat.hang_next(1)  # hold the first call (deep.identify), then break GPT behind it
    done = {}
    worker = threading.Thread(target=lambda: done.update(r=gen_client.post("/generate", json=body(1, PROMPTS[1]))))
    worker.start()
    wait_until(lambda: sims.chat.held == 1, what="the first GPT call")
    sims.chat.fail_next(10, status=500, retry_after=0.001)  # beyond GPT_MAX_RETRIES=1
    sims.chat.release()
    worker.join(30)
    response = done["r"]
    answer = response.get_json()
    assert response.status_code == 503 and answer["code"] == 2 and answer["success"] is False
    assert answer["data"] is None and answer["message"].startswith("deep.products: ")
    assert "500" in answer["message"]

    (listed,) = gen_client.get("/generations?username=alice").get_json()["data"]["items"]
    assert listed["status"] == "failed"
    assert listed["error"]["step"] == "deep.products" and listed["error"]["kind"] == "GPTServerError"
    doc = gen_client.get(f"/generations/{listed['_id']}").get_json()["data"]
    steps = {(s["step"], s["error"] is None) for s in doc["steps"]}
    assert ("deep.identify", True) in steps and ("deep.products", False) in steps
    assert doc["result"] is None
    (sketch,) = refs(doc["input"])
    assert gen_client.get(f"/images/{sketch}").status_code == 200


def test_one_dead_sd_instance_still_succeeds(gen_client, gen_db, sims):
    sims.sds[0].refuse()
    response = gen_client.post("/generate", json=body(0, PROMPTS[0]))
    answer = response.get_json()
    assert response.status_code == 200 and answer["success"] is True, answer
    check_data(0, answer["data"])
    assert sims.sds[0].jobs == [] and sum(len(sd.jobs) for sd in sims.sds) == 6
    (doc,) = all_records(gen_db)
    assert doc["status"] == "succeeded"


def test_a_bug_in_the_app_is_500_with_a_failed_record(gen_app, gen_client, gen_db, monkeypatch):
    handler = gen_app.extensions["generation_apps"][0]

    def broken(*args, **kwargs):
        raise RuntimeError("pipeline bug")

    monkeypatch.setattr(handler, "run", broken)
    response = gen_client.post("/generate", json=body(2, PROMPTS[2]))
    assert response.status_code == 500 and response.get_json()["message"] == "internal server error"
    (doc,) = all_records(gen_db)
    assert doc["status"] == "failed" and doc["result"] is None
    assert doc["error"] == {"step": None, "message": "RuntimeError: pipeline bug", "kind": "RuntimeError",
                            "code": 1}


def test_record_is_written_after_the_client_hangs_up(gen_app, gen_db, sims):
    server = make_server("127.0.0.1", 0, gen_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sims.chat.hang_next(1)
        payload = json.dumps(body(3, PROMPTS[3])).encode()
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
            conn.sendall(b"POST /generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            wait_until(lambda: sims.chat.held == 1, what="the first GPT call")
        sims.chat.release()  # the client is gone; the generation goes on and is recorded
        (doc,) = wait_until(lambda: [r for r in all_records(gen_db) if r["status"] == "succeeded"],
                            what="the record of its end")
        assert len(refs(doc["result"])) == 6 and len(all_records(gen_db)) == 1
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_twelve_image_record_keeps_images_out_of_the_document(gen_client, gen_db):
    prompts = {"selectedSchemes": [{"designTexts": ["可折叠"]}, {"designTexts": ["带计数"]}], "num": 3}
    answer = gen_client.post("/generate", json=body(3, prompts)).get_json()
    assert answer["success"] is True and len(answer["data"]["result"]) == 6
    (doc,) = all_records(gen_db)
    images = image_steps(doc)
    assert len(images) == 12 and all(set(s["image"]) == {"sha256", "contentType"} for s in images)
    assert len(refs(doc["result"])) == 12
    assert not any(s.startswith(("iVBORw0KGgo", "data:image")) for s in _strings(doc))
    assert len(bson.encode(doc)) < 256 * 1024  # 16 MB is the hard limit; this is far below


def test_unconfigured_gpt_is_503_naming_the_step(make_app):
    app = make_app()  # no AZURE_OPENAI_* or OPENAI_API_KEY: the server starts, generations fail
    response = app.test_client().post("/generate", json=body(0, PROMPTS[0]))
    answer = response.get_json()
    assert response.status_code == 503 and answer["code"] == 2
    assert answer["message"].startswith("rapid.products: ") and "not configured" in answer["message"]


@pytest.mark.parametrize("decline, kind", [
    (lambda chat: chat.filter_next(1), "GPTContentFiltered"),
    (lambda chat: setattr(chat, "script", Scripted(None, refusal="I'm sorry, but I can't help with that.")),
     "GPTRefused"),
])
def test_a_declined_prompt_is_422_code_1_asking_to_rephrase(gen_client, sims, decline, kind):
    decline(sims.chat)
    response = gen_client.post("/generate", json=body(0, PROMPTS[0]))
    answer = response.get_json()
    assert response.status_code == 422 and answer["code"] == 1 and answer["success"] is False
    assert answer["message"].startswith("rapid.products: ") and "请换一种说法" in answer["message"]
    (listed,) = gen_client.get("/generations?username=alice").get_json()["data"]["items"]
    assert listed["status"] == "failed" and listed["error"]["kind"] == kind
    assert sims.chat.calls == 1  # the same words would be declined again: no retry


def test_an_answer_failing_its_checks_twice_is_502_code_2_naming_step_and_check(gen_client, gen_db, sims):
    names = json.dumps({f"item_{i}": "方案" for i in range(1, 4)}, ensure_ascii=False)  # three times the same
    sims.chat.script = Scripted(names)
    response = gen_client.post("/generate", json=body(2, PROMPTS[2]))
    answer = response.get_json()
    assert response.status_code == 502 and answer["code"] == 2
    assert answer["message"].startswith("naming.names: GPT's answer failed its checks again")
    assert "duplicates" in answer["message"]
    (doc,) = all_records(gen_db)
    attempts = [(s["attempt"], s["reason"], [f["check"] for f in s["failed"]]) for s in doc["steps"]]
    assert attempts == [(1, None, ["duplicates", "too_short"]), (2, "correction", ["duplicates", "too_short"])]
    assert doc["steps"][1]["prompt"].startswith(doc["steps"][0]["prompt"]) and doc["steps"][1]["raw"] == names
    assert all(s["protocol"] == "structured" and s["usage"]["total_tokens"] > 0 for s in doc["steps"])


def test_each_step_of_the_record_is_timed_from_the_request_start(make_app, chat_sim, sd_sims, database_of):
    # Two instances for three image jobs: two draw at once, the third waits for one of them.
    chat_sim.latency = 0.05
    app = make_app(**backend_settings(Sims(chat_sim, [sd_sims(latency=0.15), sd_sims(latency=0.15)])))
    response = app.test_client().post("/generate", json=body(0, {"task": TASK, "num": 3}))
    assert response.status_code == 200
    record = all_records(database_of(app))[0]
    total = record["durationMs"] / 1000
    for step in record["steps"]:
        assert 0 <= step["started"] < step["finished"] <= total + 0.002, step["step"]
        span = step["finished"] - step["started"]
        assert span >= step["latency"] + (step.get("queueWait") or 0) - 0.002, step["step"]  # measured apart
    llm = [step for step in record["steps"] if step["kind"] == "llm"]
    images = sorted(image_steps(record), key=lambda step: step["queueWait"])
    assert all(step["latency"] >= 0.05 for step in llm)
    assert max(step["finished"] for step in llm) <= min(step["started"] for step in images) + 0.002
    # The first two ran at the same time: each began drawing before the other ended.
    first, second, waiting = images
    assert first["finished"] - first["latency"] < second["finished"] and \
        second["finished"] - second["latency"] < first["finished"]
    assert waiting["queueWait"] >= 0.1 and waiting["finished"] - waiting["started"] >= 0.25


def test_images_wait_in_line_as_the_participant_the_client_or_the_username(make_gen_app):
    app = make_gen_app()
    pool, owners = app.extensions["sd_pool"], []
    real = pool.txt2img

    def spy(payload, control=None):
        owners.append(control.owner)
        return real(payload, control=control)

    pool.txt2img = spy
    client = app.test_client()
    browser = {"REMOTE_ADDR": "127.0.0.9", "HTTP_USER_AGENT": "lab browser"}
    asked = [body(0, RAPID_TWO, username=None), body(0, RAPID_TWO, username="carol")]
    assert all(client.post("/generate", json=sent, environ_base=browser).status_code == 200 for sent in asked)
    assert client.post("/paint/start", json={"username": "bob"}, environ_base=browser).status_code == 200
    assert client.post("/generate", json=asked[0], environ_base=browser).status_code == 200
    assert owners == ["127.0.0.9"] * 2 + ["carol"] * 2 + ["bob"] * 2  # bob: attributed by his client


def test_more_waiting_images_than_the_cap_is_429_code_1_and_cancels_the_rest(make_gen_app, sims):
    client = make_gen_app(SD_MAX_QUEUED_PER_PARTICIPANT=2).test_client()
    assert client.post("/generate", json=body(0, RAPID_TWO)).status_code == 200  # a pace for Retry-After
    for sd in sims.sds:
        sd.hang()
    done = {}
    worker = threading.Thread(target=lambda: done.update(r=client.post("/generate", json=body(0, PROMPTS[0]))))
    worker.start()
    # Six images, three instances: three run, two may wait, the sixth is refused, and the
    # request cancels the rest: the waiting ones leave the line, the running ones are interrupted.
    wait_until(lambda: all(len(sd.interrupts) == 1 for sd in sims.sds), what="the running images interrupted")
    for sd in sims.sds:
        sd.release()
    worker.join(30)
    response = done["r"]
    answer = response.get_json()
    assert response.status_code == 429 and answer["code"] == 1 and answer["success"] is False
    assert "SD_MAX_QUEUED_PER_PARTICIPANT" in answer["message"] and int(response.headers["Retry-After"]) >= 1
    # The warm-up's two, then only the three that ran (each ends on its instance after the answer).
    wait_until(lambda: sum(len(sd.jobs) for sd in sims.sds) == 2 + 3, what="the interrupted images to end")
    time.sleep(0.2)
    assert sum(len(sd.jobs) for sd in sims.sds) == 2 + 3
    snapshot = client.application.extensions["sd_pool"].snapshot()
    assert snapshot["waiting"] == 0 and all(i["state"] == "idle" and i["failures"] == 0
                                            for i in snapshot["instances"])
    latest = client.get("/generations?username=alice").get_json()["data"]["items"][0]
    assert latest["status"] == "failed" and latest["error"]["kind"] == "TooManyQueued"
