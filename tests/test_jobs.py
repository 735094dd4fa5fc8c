"""Generations as jobs over loopback HTTP: submitted, followed with a real SSE client, cancelled, read back.

The app is served by a real threaded server (and once by gunicorn, as in production); the
events are read with sseclient-py over a streaming `requests` response, as a browser's
EventSource would read them. The core tests run on one process alone and on one sharing
through Redis (`alone_or_shared`); the last ones serve two apps of one deployment (one
Redis prefix, one database), as two processes behind one load balancer: a job runs on
one, and is followed, read and cancelled on the other.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests
import sseclient
from bson import ObjectId
from werkzeug.serving import make_server

from tests.helpers import PROMPTS, RAPID_TWO, SIM_KEY, all_records, body, check_rapid, wait_until
from tests.production_server import serving

TOKEN = "jobs-token"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def served(make_gen_app):
    """Serve a fresh app wired to the simulators; return a function giving the base URL for settings."""
    servers = []

    def serve(**settings):
        app = make_gen_app(**settings)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return app, f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server, thread in servers:
        server.shutdown()
        thread.join(10)
        server.server_close()


@pytest.fixture
def alone_or_shared(request, shared_kind) -> dict:
    """The settings of a server alone, or of one sharing its jobs through Redis: the core tests run on both."""
    if shared_kind == "process":
        return {}
    return {"REDIS_URL": request.getfixturevalue("redis_url"), "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}:"}


def submit(base: str, type_: int = 0, prompts=None, **kwargs) -> dict:
    response = requests.post(f"{base}/jobs", json=body(type_, RAPID_TWO if prompts is None else prompts, None),
                             timeout=10, **kwargs)
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    assert response.headers["Location"] == data["urls"]["self"] == f"/jobs/{data['id']}"
    return data


def events(base: str, job_id: str, last: int | None = None, **params) -> list[sseclient.Event]:
    """Read a job's whole event stream (it ends after the last event)."""
    headers = {"Accept": "text/event-stream"}
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    with requests.get(f"{base}/jobs/{job_id}/events", headers=headers, params=params, stream=True,
                      timeout=30) as response:
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        return list(sseclient.SSEClient(response).events())


def job(base: str, job_id: str) -> dict:
    return requests.get(f"{base}/jobs/{job_id}", timeout=10).json()["data"]


def drawing(sd) -> bool:
    """Return whether a WebUI simulator is drawing now, as its own progress route says."""
    return requests.get(f"{sd.url}/sdapi/v1/progress", timeout=5).json()["state"]["job_count"] > 0


def test_a_job_is_queued_runs_and_answers_what_generate_answers(served, database_of, alone_or_shared):
    app, base = served(**alone_or_shared)
    submitted = submit(base)
    assert submitted["status"] == "queued"
    assert submitted["urls"] == {"self": f"/jobs/{submitted['id']}", "events": f"/jobs/{submitted['id']}/events",
                                 "cancel": f"/jobs/{submitted['id']}"}
    done = wait_until(lambda: (found := job(base, submitted["id"]))["status"] == "succeeded" and found,
                      what="the job to succeed")
    check_rapid({"success": True, "code": 0, "data": done["result"]}, 2)  # exactly what /generate answers
    assert done["error"] is None and done["queuePosition"] is None
    assert done["progress"] == {"stepsDone": 6, "stepsTotal": 6, "imagesDone": 2, "imagesTotal": 2}
    assert done["createdAt"] <= done["startedAt"] <= done["finishedAt"]
    (record,) = all_records(database_of(app))
    assert str(record["_id"]) == submitted["id"] and record["status"] == "succeeded"
    assert record["startedAt"] is not None and record["finishedAt"] is not None


def test_events_come_in_order_with_ids_and_resume_after_last_event_id(served, sims, alone_or_shared):
    for sd in sims.sds:
        sd.per_step = 0.05  # the study's 30 steps, 1.5 s: long enough for the pool's progress poll (every second)
    app, base = served(**alone_or_shared)
    submitted = submit(base)
    seen = events(base, submitted["id"], preview="1")
    assert [int(e.id) for e in seen] == list(range(1, len(seen) + 1))
    kinds = [e.event for e in seen]
    assert kinds[0] == "status" and seen[0].data == '{"status":"queued"}'
    assert seen[1].data == '{"status":"running"}'
    assert kinds[-2:] == ["status", "result"] and seen[-2].data == '{"status":"succeeded"}'
    steps = [e for e in seen if e.event == "step"]
    assert steps[0].data.startswith('{"name":"rapid.products","state":"started"')
    started = {s.data.split('"')[3] for s in steps if '"started"' in s.data}
    finished = {s.data.split('"')[3] for s in steps if '"finished"' in s.data}
    assert started == finished == {"rapid.products", "rapid.abstracts", "rapid.scenes", "rapid.sd_prompts",
                                   "rapid.scene_images[0]", "rapid.scene_images[1]"}
    progress = [json.loads(e.data) for e in seen if e.event == "progress"]
    assert progress and all(0 <= p["progress"] <= 1 and 0 <= p["step"] <= p["steps"] for p in progress)
    assert any(p["preview"] and base64.b64decode(p["preview"]).startswith(PNG) for p in progress)
    # Resumed after any event, the stream goes on with exactly the ones after it.
    middle = len(seen) // 2
    again = events(base, submitted["id"], last=middle)
    assert [(e.id, e.event) for e in again] == [(e.id, e.event) for e in seen[middle:]]
    assert again[-1].data == seen[-1].data
    assert all("preview" not in json.loads(e.data) for e in again if e.event == "progress")  # not asked for


def test_cancel_interrupts_exactly_the_instance_drawing_the_job_and_nothing_else(served, sims, alone_or_shared):
    for sd in sims.sds:
        sd.per_step = 0.1  # 3 s an image (the study's 30 steps): cancelled long before it ends
    app, base = served(**alone_or_shared)
    mine = submit(base, prompts={"task": "a", "num": 1})
    other = submit(base, prompts={"task": "b", "num": 1}, headers={"User-Agent": "another participant"})
    wait_until(lambda: sum(drawing(sd) for sd in sims.sds) == 2, timeout=15, what="both jobs drawing")
    response = requests.delete(f"{base}/jobs/{mine['id']}", timeout=10)
    assert response.status_code == 202
    ended = wait_until(lambda: (found := job(base, mine["id"]))["status"] == "cancelled" and found, what="cancelled")
    assert ended["error"]["code"] == 1 and ended["result"] is None
    interrupted = [sd for sd in sims.sds if sd.interrupts]
    assert len(interrupted) == 1 and len(interrupted[0].interrupts) == 1
    assert wait_until(lambda: job(base, other["id"])["status"] == "succeeded", timeout=20, what="the other job")
    assert requests.delete(f"{base}/jobs/{mine['id']}", timeout=10).status_code == 409
    assert requests.delete(f"{base}/jobs/{other['id']}", timeout=10).status_code == 409


def test_a_client_leaving_generate_cancels_nothing_and_the_result_stays_readable(served, database_of, sims):
    app, base = served(JOB_KEEP=0)
    for sd in sims.sds:
        sd.per_step = 0.02
    try:
        requests.post(f"{base}/generate", json=body(0, RAPID_TWO, None), timeout=0.2)
    except requests.Timeout:
        pass  # the client gave up and closed its connection
    (record,) = wait_until(lambda: [r for r in all_records(database_of(app)) if r["status"] == "succeeded"],
                           what="the job to end")
    # The record is stored just before the job in memory ends (so that its end is readable once told):
    # then, with JOB_KEEP=0, it is read back from its record alone, as /generate would have answered it.
    found = wait_until(lambda: (seen := job(base, str(record["_id"])))["status"] == "succeeded" and seen,
                       what="the job to be told ended")
    check_rapid({"success": True, "code": 0, "data": found["result"]}, 2)
    replay = events(base, str(record["_id"]))
    assert [e.event for e in replay] == ["status", "result"] and '"succeeded"' in replay[0].data


def test_a_job_whose_server_died_is_answered_as_failed(served, database_of):
    app, base = served()
    submitted = submit(base, 2, PROMPTS[2])
    wait_until(lambda: job(base, submitted["id"])["status"] == "succeeded", what="the job")
    db = database_of(app)
    long_ago = time.time() - 3600  # its server's last heartbeat
    orphan = db.generations.find_one()
    orphan.pop("_id")
    left = db.generations.insert_one({**orphan, "status": "running", "aliveAt": long_ago, "result": None}).inserted_id
    found = job(base, str(left))
    assert found["status"] == "failed" and "stopped before it ended" in found["error"]["message"]
    assert db.generations.find_one({"_id": left})["status"] == "failed"


@pytest.mark.parametrize(("method", "path", "headers", "status", "says"), [
    ("get", "/jobs/0123456789abcdef01234567", {}, 404, "no job"),
    ("get", "/jobs/not-an-id", {}, 400, "job"),
    ("delete", "/jobs/0123456789abcdef01234567", {}, 404, "no job"),
    ("delete", "/jobs/xyz", {}, 400, "job"),
    ("get", "/jobs/0123456789abcdef01234567/events", {}, 404, "no job"),
    ("get", "/jobs/0123456789abcdef01234567/events", {"Last-Event-ID": "one"}, 400, "Last-Event-ID"),
    ("get", "/jobs/0123456789abcdef01234567/events?preview=yes", {}, 400, "preview"),
])
def test_unknown_malformed_and_bad_requests_are_refused_in_the_envelope(client, method, path, headers, status, says):
    response = getattr(client, method)(path, headers=headers)
    assert response.status_code == status
    assert says in response.get_json()["message"] and response.get_json()["success"] is False


def test_jobs_need_the_token_when_one_is_set(served):
    app, base = served(API_TOKEN=TOKEN)
    refused = requests.post(f"{base}/jobs", json=body(0, RAPID_TWO, None), timeout=10)
    assert refused.status_code == 401
    submitted = submit(base, headers={"Authorization": f"Bearer {TOKEN}"})
    assert requests.get(f"{base}/jobs/{submitted['id']}", timeout=10).status_code == 401
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = requests.get(f"{base}/jobs/{submitted['id']}", headers={"Authorization": f"Bearer {TOKEN}"},
                             timeout=10).json()["data"]["status"]
        if state == "succeeded":
            break
        time.sleep(0.05)
    assert state == "succeeded"


def test_a_job_waiting_for_an_instance_says_its_place_in_line(served, sims):
    sd = sims.sds[0]
    sd.per_step = 0.05  # 1.5 s an image, one instance: the job's second image waits for its first
    app, base = served(SD_ENDPOINTS=[sd.endpoint])
    submitted = submit(base)
    waiting = wait_until(lambda: (found := job(base, submitted["id"]))["queuePosition"] is not None and found,
                         what="an image waiting")
    assert waiting["queuePosition"] == 1 and waiting["status"] == "running"
    assert waiting["progress"]["imagesTotal"] == 2 and waiting["progress"]["imagesDone"] == 0
    done = wait_until(lambda: (found := job(base, submitted["id"]))["status"] == "succeeded" and found,
                      what="the job")
    assert done["queuePosition"] is None and done["progress"]["imagesDone"] == 2


def test_a_quiet_stream_sends_keep_alive_comments(served, sims):
    for sd in sims.sds:
        sd.per_step = 0.03  # about a second of drawing, with nothing to tell in between but progress
    app, base = served(JOB_KEEPALIVE=0.1)
    submitted = submit(base)
    with requests.get(f"{base}{submitted['urls']['events']}", stream=True, timeout=30) as response:
        lines = [line for line in response.iter_lines(decode_unicode=True)]
    assert lines.count(": keep-alive") >= 2
    assert [line for line in lines if line.startswith("event: ")][-1] == "event: result"  # and then it ended


def test_the_production_server_streams_a_jobs_events_to_their_end(mongo_uri, tmp_path, sims):
    """Under gunicorn and its worker (core/worker.py), as operators run it: the stream flows and ends."""
    with serving(MONGO_URI=mongo_uri, MONGO_DB=f"jobs_{uuid.uuid4().hex[:12]}", DATA_DIR=str(tmp_path / "var"),
                 AZURE_OPENAI_ENDPOINT=sims.chat.url, AZURE_OPENAI_API_KEY=SIM_KEY,
                 SD_ENDPOINTS=",".join(sd.endpoint for sd in sims.sds), JOB_KEEPALIVE="0.2") as server:
        base = f"http://127.0.0.1:{server.port}"
        sims.chat.latency = 0.3  # a quiet moment or two for the keep-alive comments
        submitted = submit(base)
        seen = events(base, submitted["id"])
        assert [e.event for e in seen][-2:] == ["status", "result"] and '"succeeded"' in seen[-2].data
        check_rapid({"success": True, "code": 0, "data": json.loads(seen[-1].data)["data"]}, 2)
        assert [int(e.id) for e in seen] == list(range(1, len(seen) + 1))


@pytest.mark.parametrize(("sent", "field"), [
    ({"appid": 0, "type": 0, "prompts": {"task": "", "num": 6}}, "prompts.task"),
    ({"appid": 0, "type": 0, "prompts": {"task": "x", "num": 99}}, "prompts.num"),
    ({"appid": 7, "type": 0, "prompts": {}}, "appid"),
    ({"appid": 0, "type": 9, "prompts": {}}, "type"),
    ({"appid": 0, "type": 1, "prompts": {"designTask": "x", "designTexts": [], "designImage": "data:image/png;base64,AAAA",
                                         "schemeId": 1}}, "prompts.designImage"),
    ([1, 2], "body"),
])
def test_jobs_refuses_what_generate_refuses_and_submits_nothing(client, db, sent, field):
    answers = [client.post(path, json=sent) for path in ("/generate", "/jobs")]
    assert [a.status_code for a in answers] == [400, 400]
    assert answers[0].get_json() == answers[1].get_json() and answers[1].get_json()["message"].startswith(field)
    assert db.generations.count_documents({}) == 0


# -- two servers of one deployment --------------------------------------------------------
@pytest.fixture
def deployment(served, redis_url):
    """Return `deploy(**settings)`: two served apps of one deployment, [(app, base URL), (app, base URL)]."""

    def deploy(**settings):
        common = {"REDIS_URL": redis_url, "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}:",
                  "MONGO_DB": f"jobs_{uuid.uuid4().hex[:12]}", **settings}
        return [served(**common), served(**common)]

    return deploy


def told(seen: list[sseclient.Event]) -> list[tuple[str, str, dict]]:
    """Return the id, kind and data of each event, a progress event's data without its preview."""
    return [(e.id, e.event, {k: v for k, v in json.loads(e.data).items() if k != "preview" or e.event != "progress"})
            for e in seen]


def test_another_server_streams_every_event_with_its_ids_and_resumes_after_last_event_id(deployment, sims,
                                                                                         redis_url):
    for sd in sims.sds:
        sd.per_step = 0.05  # 1.5 s an image: progress events, with previews, on the way
    (app_a, a), (app_b, b) = deployment()
    submitted = submit(a)
    with ThreadPoolExecutor(2) as readers:  # both follow it live, from its first event; only B asks for previews
        on_b = readers.submit(events, b, submitted["id"], preview="1")
        on_a = readers.submit(events, a, submitted["id"])
        seen_a, seen_b = on_a.result(), on_b.result()
    assert told(seen_b) == told(seen_a)
    assert [int(e.id) for e in seen_b] == list(range(1, len(seen_b) + 1)) and seen_b[-1].event == "result"
    assert seen_b[-1].data == seen_a[-1].data
    progress = [json.loads(e.data) for e in seen_b if e.event == "progress"]
    assert any(p["preview"] and base64.b64decode(p["preview"]).startswith(PNG) for p in progress)
    assert all("preview" not in json.loads(e.data) for e in seen_a if e.event == "progress")
    # Resumed on either server after any event: exactly the ones after it, previews only when asked.
    middle = len(seen_a) // 2
    again_b = events(b, submitted["id"], last=middle)
    assert told(again_b) == told(events(a, submitted["id"], last=middle))
    assert [e.id for e in again_b] == [e.id for e in seen_a[middle:]]
    assert all("preview" not in json.loads(e.data) for e in again_b if e.event == "progress")
    on_a, on_b = job(a, submitted["id"]), job(b, submitted["id"])  # A from memory, B from the record
    assert on_b["status"] == "succeeded" and on_b["result"] == on_a["result"] and on_b["progress"] == on_a["progress"]
    # Once its events expired, the record tells the end, as for a job of a process alone.
    stream = f"{app_a.config['REDIS_PREFIX']}job:{submitted['id']}:events"
    with redis.Redis.from_url(redis_url) as direct:
        assert 3600 - 5 < direct.ttl(stream) <= 3600
        direct.delete(stream)
    replay = events(b, submitted["id"])
    assert [(e.id, e.event) for e in replay] == [("2", "status"), ("3", "result")]
    assert replay[-1].data == seen_a[-1].data


def test_a_cancel_on_another_server_interrupts_exactly_the_instance_drawing_the_job(deployment, sims):
    for sd in sims.sds:
        sd.per_step = 0.1  # 3 s an image: cancelled long before it ends
    (app_a, a), (app_b, b) = deployment()
    mine = submit(a, prompts={"task": "a", "num": 1})
    other = submit(a, prompts={"task": "b", "num": 1}, headers={"User-Agent": "another participant"})
    wait_until(lambda: sum(drawing(sd) for sd in sims.sds) == 2, timeout=15, what="both jobs drawing")
    # Its four GPT steps are done and its image is being drawn: B tells it from what A told.
    wait_until(lambda: job(b, mine["id"])["progress"] == {"stepsDone": 4, "stepsTotal": 5, "imagesDone": 0,
                                                          "imagesTotal": 1}, what="B to tell the progress")
    response = requests.delete(f"{b}/jobs/{mine['id']}", timeout=10)
    assert response.status_code == 202 and response.json()["data"]["status"] == "running"
    ended = wait_until(lambda: (found := job(b, mine["id"]))["status"] == "cancelled" and found, what="cancelled")
    assert ended["error"]["code"] == 1 and ended["result"] is None
    interrupted = [sd for sd in sims.sds if sd.interrupts]
    assert len(interrupted) == 1 and len(interrupted[0].interrupts) == 1
    assert wait_until(lambda: job(b, other["id"])["status"] == "succeeded", timeout=20, what="the other job")
    assert [e.event for e in events(b, mine["id"])][-2:] == ["status", "error"]
    assert requests.delete(f"{b}/jobs/{mine['id']}", timeout=10).status_code == 409
    assert requests.delete(f"{b}/jobs/0123456789abcdef01234567", timeout=10).status_code == 404


def test_a_stream_on_another_server_ends_when_the_server_running_the_job_dies(deployment, sims):
    for sd in sims.sds:
        sd.per_step = 0.2  # 6 s an image: the job outlives its server
    (app_a, a), (app_b, b) = deployment(JOB_HEARTBEAT=0.2, JOB_KEEPALIVE=0.2)
    submitted = submit(a, prompts={"task": "a", "num": 1})
    wait_until(lambda: any(drawing(sd) for sd in sims.sds), timeout=15, what="the job drawing")
    jobs_a = app_a.extensions["jobs"]
    jobs_a.close(timeout=0)  # as if A died: no heartbeat, nothing told, nothing heard; its job goes on
    try:
        started = time.monotonic()
        seen = events(b, submitted["id"])
        assert time.monotonic() - started < 5
        assert [int(e.id) for e in seen] == list(range(1, len(seen) + 1))
        assert [e.event for e in seen][-2:] == ["status", "error"] and '"failed"' in seen[-2].data
        assert "stopped before it ended" in json.loads(seen[-1].data)["message"]
        assert job(b, submitted["id"])["status"] == "failed"
    finally:
        jobs_a.get(ObjectId(submitted["id"])).cancel()  # so that A's app closes at once
