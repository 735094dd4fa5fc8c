"""The WebUI simulator speaks the AUTOMATIC1111 API over real HTTP and injects faults on demand."""
from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import pytest
import requests

from simulators.png import read_png_header, render_png
from tests.helpers import Worker, small_payload, wait_until


def post(sim, path, payload, **kwargs):
    return requests.post(sim.url + path, json=payload, timeout=5, **kwargs)


def test_txt2img_answers_images_parameters_and_info(sd_sims):
    sim = sd_sims()
    payload = small_payload(batch_size=2, n_iter=2, seed=-1, cfg_scale=5, styles=["photographic"],
                            override_settings={"sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors"})
    reply = post(sim, "/sdapi/v1/txt2img", payload)
    assert reply.status_code == 200
    body = reply.json()
    assert len(body["images"]) == 4
    assert body["parameters"] == payload
    info = json.loads(body["info"])
    assert info["all_seeds"] == [info["seed"] + i for i in range(4)]
    assert info["seed"] != -1
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (16, 8, 2, 5)
    assert info["sd_model_name"] == "v1-5-pruned-emaonly"
    assert info["styles"] == ["photographic"] and info["prompt"] == payload["prompt"]


def test_random_seed_is_derived_from_the_prompt(sd_sims):
    sim = sd_sims()
    seeds = [json.loads(post(sim, "/sdapi/v1/txt2img", small_payload(p)).json()["info"])["seed"]
             for p in ("a lamp", "a lamp", "a kettle")]
    assert seeds[0] == seeds[1] != seeds[2]
    fixed = post(sim, "/sdapi/v1/txt2img", small_payload(seed=1234)).json()
    assert json.loads(fixed["info"])["seed"] == 1234


def test_images_are_valid_pngs_of_the_requested_size(sd_sims):
    sim = sd_sims()
    body = post(sim, "/sdapi/v1/txt2img", small_payload(width=40, height=24, batch_size=2)).json()
    pngs = [base64.b64decode(image, validate=True) for image in body["images"]]
    assert [read_png_header(png) for png in pngs] == [(40, 24), (40, 24)]
    assert pngs[0] != pngs[1]


def test_png_checker_rejects_a_corrupted_picture():
    png = bytearray(render_png(8, 4, "x"))
    png[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    with pytest.raises(ValueError, match="CRC"):
        read_png_header(bytes(png))


def test_img2img_needs_init_images_and_accepts_data_uris(sd_sims):
    sim = sd_sims()
    missing = post(sim, "/sdapi/v1/img2img", small_payload())
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "init_images"]
    sketch = "data:image/png;base64," + base64.b64encode(render_png(4, 4, "sketch")).decode()
    done = post(sim, "/sdapi/v1/img2img", small_payload(init_images=[sketch], denoising_strength=0.6))
    assert done.status_code == 200 and len(done.json()["images"]) == 1


@pytest.mark.parametrize("body", [
    json.dumps(small_payload(width=0)),
    json.dumps(small_payload(height=100_000)),
    json.dumps(small_payload(width="wide")),
    json.dumps(small_payload(steps=2.5)),
    json.dumps(["not", "an", "object"]),
    "{not json",
])
def test_invalid_payloads_get_422_with_fastapi_detail(sd_sims, body):
    sim = sd_sims()
    reply = requests.post(sim.url + "/sdapi/v1/txt2img", data=body, timeout=5)
    assert reply.status_code == 422
    assert reply.json()["detail"] and all("msg" in d and "loc" in d for d in reply.json()["detail"])
    assert sim.jobs == []


def test_progress_options_models_and_ping(sd_sims):
    sim = sd_sims()
    progress = requests.get(sim.url + "/sdapi/v1/progress", timeout=5).json()
    assert set(progress) == {"progress", "eta_relative", "state", "current_image", "textinfo"}
    assert progress["progress"] == 0.0 and progress["current_image"] is None
    models = requests.get(sim.url + "/sdapi/v1/sd-models", timeout=5).json()
    assert {"title", "model_name", "hash", "sha256", "filename", "config"} <= set(models[0])
    options = requests.get(sim.url + "/sdapi/v1/options", timeout=5).json()
    assert options["sd_model_checkpoint"] == models[0]["title"]
    assert post(sim, "/sdapi/v1/options", {"sd_model_checkpoint": models[1]["title"]}).status_code == 200
    info = json.loads(post(sim, "/sdapi/v1/txt2img", small_payload()).json()["info"])
    assert info["sd_model_name"] == models[1]["model_name"]
    ping = requests.get(sim.url + "/internal/ping", timeout=5)
    assert (ping.status_code, ping.json(), sim.pings) == (200, {}, 1)
    assert requests.get(sim.url + "/sdapi/v1/nothing", timeout=5).status_code == 404


def test_progress_reports_a_running_job(sd_sims):
    sim = sd_sims()
    sim.hang()
    worker = Worker(lambda: post(sim, "/sdapi/v1/txt2img", small_payload()))
    worker.start()
    wait_until(lambda: sim.max_concurrency == 1, what="the job to start")
    state = requests.get(sim.url + "/sdapi/v1/progress", timeout=5).json()["state"]
    assert state["job_count"] == 1
    sim.release()
    assert worker.outcome().status_code == 200


def test_generations_run_one_at_a_time(sd_sims):
    sim = sd_sims(latency=0.01)
    sim.hang()  # hold the first job so the others pile up behind the queue lock
    workers = [Worker(lambda i=i: post(sim, "/sdapi/v1/txt2img", small_payload(f"job {i}"))) for i in range(4)]
    for worker in workers:
        worker.start()
    wait_until(lambda: sim.max_in_flight == 4, what="four open requests")
    sim.release()
    assert all(worker.outcome().status_code == 200 for worker in workers)
    jobs = sorted(sim.jobs, key=lambda job: job.start)
    assert sim.max_concurrency == 1 and len(jobs) == 4
    assert all(earlier.end <= later.start for earlier, later in zip(jobs, jobs[1:]))


def test_basic_auth_guards_the_api(sd_sims):
    sim = sd_sims(auth="alice:s3cret")
    assert sim.endpoint == sim.url.replace("http://", "http://alice:s3cret@")
    no_auth = post(sim, "/sdapi/v1/txt2img", small_payload())
    assert no_auth.status_code == 401 and "Basic" in no_auth.headers["WWW-Authenticate"]
    assert post(sim, "/sdapi/v1/txt2img", small_payload(), auth=("alice", "wrong")).status_code == 401
    assert post(sim, "/sdapi/v1/txt2img", small_payload(), auth=("alice", "s3cret")).status_code == 200
    assert requests.get(sim.url + "/internal/ping", timeout=5).status_code == 200


def test_fail_answers_500_for_the_next_jobs_or_always(sd_sims):
    sim = sd_sims()
    sim.fail(2)
    assert [post(sim, "/sdapi/v1/txt2img", small_payload()).status_code for _ in range(3)] == [500, 500, 200]
    sim.fail()
    assert [post(sim, "/sdapi/v1/txt2img", small_payload()).status_code for _ in range(3)] == [500] * 3
    sim.heal()
    assert post(sim, "/sdapi/v1/txt2img", small_payload()).status_code == 200


def test_hang_holds_jobs_until_released(sd_sims):
    sim = sd_sims()
    sim.hang()
    with pytest.raises(requests.Timeout):
        requests.post(sim.url + "/sdapi/v1/txt2img", json=small_payload(), timeout=(1, 0.2))
    sim.release()
    assert post(sim, "/sdapi/v1/txt2img", small_payload()).status_code == 200


def test_refuse_and_revive_on_the_same_port(sd_sims):
    sim = sd_sims()
    url = sim.url
    sim.refuse()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/internal/ping", timeout=2)
    sim.revive()
    assert sim.url == url and requests.get(url + "/internal/ping", timeout=2).status_code == 200


def test_die_after_n_jobs_stops_listening(sd_sims):
    sim = sd_sims()
    sim.die_after(2)
    assert [post(sim, "/sdapi/v1/txt2img", small_payload()).status_code for _ in range(2)] == [200, 200]
    with pytest.raises(requests.ConnectionError):
        post(sim, "/sdapi/v1/txt2img", small_payload())
    assert not sim.listening
    sim.heal()
    assert post(sim, "/sdapi/v1/txt2img", small_payload()).status_code == 200


def test_command_line_sets_faults_and_logs_its_url():
    command = [sys.executable, "-m", "simulators.webui", "--port", "0", "--fail", "1", "--auth", "u:p"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        url = re.search(r"listening on (http://\S+)", line).group(1)
        codes = [requests.post(url + "/sdapi/v1/txt2img", json=small_payload(), auth=("u", "p"), timeout=5).status_code
                 for _ in range(2)]
        assert codes == [500, 200]
        assert "p@" not in line
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stderr.close()
    assert process.returncode == 0
