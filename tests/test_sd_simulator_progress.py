"""The WebUI simulator reports progress and obeys interrupt and skip as AUTOMATIC1111 does."""
from __future__ import annotations

import base64
import json
import time

import pytest
import requests

from simulators.png import read_png_header
from simulators.webui import generation_reply, sampling_steps
from tests.helpers import Worker, small_payload, wait_until

IDLE_STATE = {
    "skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
    "job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0,
}


def progress(sim, skip_current_image=None):
    params = {} if skip_current_image is None else {"skip_current_image": skip_current_image}
    reply = requests.get(sim.url + "/sdapi/v1/progress", params=params, timeout=5)
    assert reply.status_code == 200
    return reply.json()


def txt2img(sim, payload):
    return Worker(lambda: requests.post(sim.url + "/sdapi/v1/txt2img", json=payload, timeout=10))


def started(*workers):
    for worker in workers:
        worker.start()
    return workers[0] if len(workers) == 1 else workers


def sampled_a_step(sim):
    return progress(sim, "true")["state"]["sampling_step"] >= 1


def test_idle_progress_is_the_webuis_before_any_job(sd_sims):
    sim = sd_sims()
    assert progress(sim) == {"progress": 0.0, "eta_relative": 0.0, "state": IDLE_STATE,
                             "current_image": None, "textinfo": None}
    assert sim.progress_polls == 1


def test_progress_rises_with_the_steps_of_the_running_job(sd_sims):
    sim = sd_sims(per_step=0.02)
    worker = started(txt2img(sim, small_payload(steps=10)))
    seen = []
    while worker.is_alive() or not seen:
        seen.append(progress(sim, "true"))
    assert worker.outcome().status_code == 200
    running = [p for p in seen if p["state"]["job_count"]]
    assert running, "no poll saw the job running"
    assert all(p["state"]["job"] == "scripts_txt2img" and p["state"]["sampling_steps"] in (0, 10) for p in running)
    fractions = [p["progress"] for p in running]
    assert fractions == sorted(fractions) and 0.01 <= fractions[0] and fractions[-1] <= 1.0
    assert len({p["state"]["sampling_step"] for p in running}) >= 3
    assert all(p["eta_relative"] >= 0 for p in running)
    after = progress(sim)
    # The WebUI keeps the last job's counters when it ends; only job and job_count go idle.
    assert (after["progress"], after["eta_relative"], after["current_image"]) == (0.0, 0.0, None)
    assert {k: after["state"][k] for k in ("job", "job_count", "job_no", "sampling_steps")} == {
        "job": "", "job_count": 0, "job_no": 1, "sampling_steps": 10}
    assert after["state"]["job_timestamp"] != "0"
    assert sim.progress_polls == len(seen) + 1
    assert sim.jobs[0].batch_steps == (10,) and not sim.jobs[0].interrupted


def test_preview_only_when_asked_for_and_due_as_a_small_png(sd_sims):
    sim = sd_sims(per_step=0.05)
    payload = small_payload(width=64, height=32, steps=6)
    worker = started(txt2img(sim, payload))
    wait_until(lambda: sampled_a_step(sim), what="two sampled steps")
    # The WebUI's default draws a preview every 10 steps: none yet in a 6-step job.
    assert progress(sim, "false")["current_image"] is None
    assert worker.outcome().status_code == 200
    options = requests.post(sim.url + "/sdapi/v1/options", json={"show_progress_every_n_steps": 1}, timeout=5)
    assert options.status_code == 200
    worker = started(txt2img(sim, payload))
    wait_until(lambda: progress(sim, "true")["state"]["job_count"], what="the job to start")
    assert progress(sim, "false")["current_image"] is None  # nothing sampled to preview yet
    wait_until(lambda: sampled_a_step(sim), what="two sampled steps")
    assert progress(sim, "true")["current_image"] is None
    assert progress(sim)["current_image"] == progress(sim, "false")["current_image"]  # false is the default
    preview = base64.b64decode(progress(sim, "false")["current_image"], validate=True)
    assert read_png_header(preview) == (8, 4)  # latent size: an eighth of 64x32
    final = base64.b64decode(worker.outcome().json()["images"][0])
    assert read_png_header(final) == (64, 32)
    assert progress(sim, "false")["current_image"] is None  # idle again


def test_progress_refuses_a_skip_current_image_that_is_no_boolean(sd_sims):
    sim = sd_sims()
    reply = requests.get(sim.url + "/sdapi/v1/progress", params={"skip_current_image": "maybe"}, timeout=5)
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["loc"] == ["query", "skip_current_image"]


def test_interrupt_ends_the_running_job_early_and_the_queued_one_runs_whole(sd_sims):
    sim = sd_sims(per_step=0.1)
    long, short = small_payload(steps=10, seed=7), small_payload(steps=1, seed=7)
    first = started(txt2img(sim, long))
    wait_until(lambda: sampled_a_step(sim), what="two sampled steps")
    second = started(txt2img(sim, short))
    wait_until(lambda: sim.max_in_flight == 2, what="the second job to queue")
    before = time.monotonic()
    interrupt = requests.post(sim.url + "/sdapi/v1/interrupt", timeout=5)
    assert (interrupt.status_code, interrupt.json()) == (200, {})
    cut = first.outcome()
    assert time.monotonic() - before < 0.5  # not the 0.8 s the other eight steps would take
    # Like the WebUI: 200, the image decoded from the half-denoised latent, and its info.
    assert cut.status_code == 200 and len(cut.json()["images"]) == 1
    noisy = base64.b64decode(cut.json()["images"][0], validate=True)
    assert read_png_header(noisy) == (16, 8)
    assert cut.json()["images"][0] != generation_reply(long, "")["images"][0]
    assert json.loads(cut.json()["info"])["seed"] == 7
    whole = second.outcome()
    assert whole.status_code == 200 and whole.json()["images"] == generation_reply(short, "")["images"]
    interrupted, ran = sim.jobs
    assert interrupted.interrupted and 2 <= interrupted.steps_done < 10
    assert interrupted.end - interrupted.start < 0.5
    assert not ran.interrupted and ran.batch_steps == (1,)
    assert len(sim.interrupts) == 1 and before <= sim.interrupts[0] <= interrupted.end


def test_interrupt_on_one_instance_leaves_another_running(sd_sims):
    a, b = sd_sims(per_step=0.05), sd_sims(per_step=0.05)
    on_a, on_b = started(txt2img(a, small_payload(steps=8)), txt2img(b, small_payload(steps=8)))
    wait_until(lambda: sampled_a_step(a) and sampled_a_step(b), what="both jobs to sample")
    assert requests.post(a.url + "/sdapi/v1/interrupt", timeout=5).status_code == 200
    assert on_a.outcome().status_code == on_b.outcome().status_code == 200
    assert a.jobs[0].interrupted and a.jobs[0].steps_done < 8
    assert not b.jobs[0].interrupted and b.jobs[0].batch_steps == (8,)
    assert (len(a.interrupts), b.interrupts) == (1, [])


def test_interrupt_and_skip_when_idle_do_nothing(sd_sims):
    sim = sd_sims()
    interrupt = requests.post(sim.url + "/sdapi/v1/interrupt", timeout=5)
    skip = requests.post(sim.url + "/sdapi/v1/skip", timeout=5)
    assert (interrupt.status_code, interrupt.json(), skip.status_code, skip.json()) == (200, {}, 200, None)
    assert progress(sim)["state"]["job_count"] == 0
    reply = requests.post(sim.url + "/sdapi/v1/txt2img", json=small_payload(), timeout=5)
    assert reply.status_code == 200 and reply.json()["images"] == generation_reply(small_payload(), "")["images"]
    assert not sim.jobs[0].interrupted and sim.jobs[0].batch_steps == (2,)
    assert (len(sim.interrupts), len(sim.skips)) == (1, 1)


def test_skip_cuts_short_only_the_batch_being_sampled(sd_sims):
    sim = sd_sims(per_step=0.1)
    payload = small_payload(steps=2, n_iter=2, seed=3)
    worker = started(txt2img(sim, payload))
    wait_until(lambda: progress(sim, "true")["state"]["job"] == "Batch 1 out of 2", what="the first batch")
    assert requests.post(sim.url + "/sdapi/v1/skip", timeout=5).status_code == 200
    reply = worker.outcome()
    assert reply.status_code == 200
    images, whole = reply.json()["images"], generation_reply(payload, "")["images"]
    assert len(images) == 2 and images[0] != whole[0] and images[1] == whole[1]
    job = sim.jobs[0]
    assert job.skipped == 1 and not job.interrupted
    assert job.batch_steps[0] < 2 and job.batch_steps[1] == 2
    assert progress(sim)["state"]["job_no"] == 2


def test_a_stalled_instance_still_reports_progress_and_holds_its_job_through_an_interrupt(sd_sims):
    sim = sd_sims()
    sim.hang()
    worker = started(txt2img(sim, small_payload()))
    wait_until(lambda: sim.max_concurrency == 1, what="the job to start")
    first = progress(sim)
    assert (first["progress"], first["state"]["job"], first["state"]["job_count"]) == (0.01, "scripts_txt2img", 1)
    assert requests.post(sim.url + "/sdapi/v1/interrupt", timeout=5).status_code == 200
    time.sleep(0.05)
    stuck = progress(sim)
    assert worker.is_alive() and stuck["state"]["interrupted"] and stuck["eta_relative"] > first["eta_relative"]
    sim.release()
    # Interrupted before its first batch began: the WebUI answers with no image at all.
    reply = worker.outcome()
    assert reply.status_code == 200 and reply.json()["images"] == []
    assert json.loads(reply.json()["info"])["infotexts"]
    assert sim.jobs[0].interrupted and sim.jobs[0].steps_done == 0


def test_a_dead_instance_answers_neither_the_job_nor_progress(sd_sims):
    sim = sd_sims(per_step=0.5)
    worker = started(txt2img(sim, small_payload(steps=20)))
    wait_until(lambda: progress(sim)["state"]["job_count"], what="the job to start")
    before = time.monotonic()
    sim.die_after(0)
    with pytest.raises(requests.ConnectionError):
        worker.outcome()
    assert time.monotonic() - before < 1.0  # it stopped sampling when it died
    with pytest.raises(requests.ConnectionError):
        requests.get(sim.url + "/sdapi/v1/progress", timeout=2)
    assert sim.jobs == []


@pytest.mark.parametrize(("kind", "fields", "steps"), [
    ("txt2img", {"steps": 8}, 8),
    ("img2img", {"steps": 8}, 7),  # denoising_strength 0.75 by default: int(0.75 * 8) + 1
    ("img2img", {"steps": 8, "denoising_strength": 0.5}, 5),
    ("img2img", {"steps": 8, "denoising_strength": 1.0}, 8),
])
def test_img2img_samples_only_its_denoised_share_of_the_steps(kind, fields, steps):
    assert sampling_steps(kind, fields) == steps
