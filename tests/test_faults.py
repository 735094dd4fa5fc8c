"""Backend faults during POST /generate: what the client hears, what the record keeps, recovery.

Each test breaks a simulator over loopback while the server uses it, checks the answer
(success after failover, or a code 2 envelope naming the step), checks the generation
record tells what happened, then heals the fault and checks the next request succeeds.
MongoDB faults are in test_faults_database.py, SIGTERM in test_graceful_shutdown.py.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from flask import Flask

from core.backends import get_pool
from simulators.webui import SDWebUISimulator
from tests.helpers import (
    PROMPTS, RAPID_TWO, Worker, all_records, check_rapid, image_steps, post_generate, wait_until,
)

# Small enough to see each fault quickly, large enough for a loaded 2-core machine.
FAULT_SETTINGS = {"SD_COOLDOWN": 0.3, "SD_READ_TIMEOUT": 1.5, "SD_ACQUIRE_TIMEOUT": 60.0,
                  "GPT_MAX_RETRIES": 2}


@pytest.fixture
def gen_app(make_gen_app) -> Flask:
    """Conftest's gen_app with the fault settings, for this module (gen_client and gen_db follow it)."""
    return make_gen_app(**FAULT_SETTINGS)


def name_of(sim) -> str:
    """Return how the pool and the records name a simulator."""
    return f"{sim.host}:{sim.port}"


def check_backend_failure(status: int, answer: dict[str, Any], step_prefix: str, http: int = 503) -> None:
    """Check a code 2 envelope whose message names a step starting with `step_prefix`."""
    assert status == http and answer["success"] is False and answer["code"] == 2, answer
    assert answer["data"] is None and answer["message"].startswith(step_prefix), answer["message"]


def instance_state(app: Flask, sim: SDWebUISimulator) -> dict[str, Any]:
    """Return the pool's view of one simulator."""
    with app.app_context():
        instances = get_pool().snapshot()["instances"]
    return next(i for i in instances if i["name"] == name_of(sim))


def wait_cooldowns_over(app: Flask, timeout: float = 10.0) -> None:
    """Wait until no instance of the app's pool has cooldown time left (probes may then run)."""
    def over() -> bool:
        with app.app_context():
            return all(i["cooldown_remaining"] == 0 for i in get_pool().snapshot()["instances"])
    wait_until(over, timeout, "the cooldowns to end")


def timed(fn, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Return (seconds taken, result) of one call."""
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return time.monotonic() - started, result


def check_failover(record, victim, *causes: str) -> None:
    """Check an ok record where exactly one image job moved off `victim` after one of `causes`."""
    assert record["status"] == "succeeded" and record["error"] is None
    moved = [step for step in image_steps(record) if step["attempts"] == 2]
    assert len(moved) == 1, image_steps(record)
    (error,) = moved[0]["errors"]
    assert name_of(victim) in error and any(cause in error for cause in causes), error
    assert moved[0]["instance"] != name_of(victim) and moved[0]["error"] is None
    others = [step for step in image_steps(record) if step is not moved[0]]
    assert all(step["attempts"] == 1 and step["errors"] == [] for step in others)


def check_recovers(app, client, victim) -> None:
    """Heal `victim`, wait out its cooldown and check the next generation succeeds and probes it back."""
    victim.heal()
    wait_cooldowns_over(app)
    status, answer = post_generate(client, prompts=PROMPTS[0])
    assert status == 200
    check_rapid(answer, 6)
    wait_until(lambda: instance_state(app, victim)["healthy"], what="the healed instance back in the pool")
    assert victim.pings >= 1


def test_sd_instance_dying_mid_job_fails_over_and_the_record_shows_both_attempts(
        gen_app, gen_client, gen_db, sims):
    victim = sims.sds[0]
    victim.hang()  # hold the first job it gets, so it dies with the job running
    worker = Worker(lambda: post_generate(gen_client, prompts=PROMPTS[0]))
    worker.start()
    wait_until(lambda: victim.max_in_flight == 1, what="a job on the victim")
    victim.die_after(0)
    victim.release()
    status, answer = worker.outcome(30)
    assert status == 200
    check_rapid(answer, 6)
    assert victim.jobs == [] and sum(len(sd.jobs) for sd in sims.sds) == 6
    (record,) = all_records(gen_db)
    # The socket closes unanswered; the client sees a reset or an EOF, depending on timing.
    check_failover(record, victim, "connection reset", "connection closed without an answer")
    assert instance_state(gen_app, victim)["state"] == "cooldown"
    check_recovers(gen_app, gen_client, victim)


def test_hanging_sd_instance_hits_the_read_timeout_and_the_job_finishes_elsewhere(
        gen_app, gen_client, gen_db, sims):
    victim = sims.sds[0]
    victim.hang()
    status, answer = post_generate(gen_client, prompts=PROMPTS[0])
    assert status == 200
    check_rapid(answer, 6)
    (record,) = all_records(gen_db)
    check_failover(record, victim, "no answer within 1.5s")
    check_recovers(gen_app, gen_client, victim)


def test_all_sd_instances_down_is_a_quick_503_naming_the_step(gen_app, gen_client, gen_db, sims):
    for sd in sims.sds:
        sd.refuse()
    # One image: its job tries all three instances in turn, and the last refusal must still
    # read as "all down", not as one instance's trouble.
    elapsed, (status, answer) = timed(post_generate, gen_client, prompts={**RAPID_TWO, "num": 1})
    check_backend_failure(status, answer, "rapid.scene_images[0]: ")
    assert "all 3 Stable Diffusion instances are down" in answer["message"]
    assert elapsed < 10  # not the 60 s acquire timeout: down instances answer at once
    (record,) = all_records(gen_db)
    assert record["status"] == "failed" and record["result"] is None
    assert record["error"]["step"] == answer["message"].split(": ", 1)[0]
    assert record["error"]["kind"] == "AllInstancesDown"
    failed = image_steps(record)
    assert failed and all(step["error"] and step["image"] is None for step in failed)
    assert all(step["attempts"] == len(step["errors"]) for step in failed)
    assert [step["attempts"] for step in failed] == [3]  # every instance was tried
    # Each instance in turn (least recently used first): the last one tried is the third.
    assert [step["instance"] for step in failed] == [name_of(sims.sds[2])]

    status, answer = post_generate(gen_client, prompts=PROMPTS[0])  # six jobs at once, still down
    check_backend_failure(status, answer, "rapid.scene_images[")
    assert "Stable Diffusion instances are down" in answer["message"]
    for sd in sims.sds:
        sd.heal()
    wait_cooldowns_over(gen_app)
    status, answer = post_generate(gen_client, prompts=PROMPTS[0])
    assert status == 200
    check_rapid(answer, 6)
    assert [r["status"] for r in all_records(gen_db)] == ["failed", "failed", "succeeded"]


def test_failed_image_job_names_the_instance_it_failed_on(make_gen_app, database_of, sims):
    app = make_gen_app(**FAULT_SETTINGS, SD_MAX_ATTEMPTS=1)  # no failover: the job fails where it ran
    victim = sims.sds[0]  # the least recently used instance takes the first job
    victim.fail()
    status, answer = post_generate(app.test_client(), prompts={**RAPID_TWO, "num": 1})
    check_backend_failure(status, answer, "rapid.scene_images[0]: ")
    assert f"SD instance {name_of(victim)}: HTTP 500" in answer["message"]
    (record,) = all_records(database_of(app))
    assert record["status"] == "failed" and record["error"]["kind"] == "SDServerError"
    (failed,) = image_steps(record)
    assert failed["instance"] == name_of(victim) and failed["image"] is None
    assert failed["attempts"] == 1 and len(failed["errors"]) == 1 and name_of(victim) in failed["errors"][0]
    assert failed["error"] == failed["errors"][0]


def llm_steps(record, step: str) -> list[dict]:
    """Return the LLM entries of `step` in a record."""
    return [entry for entry in record["steps"] if entry["kind"] == "llm" and entry["step"] == step]


def test_gpt_rate_limit_is_retried_then_reported_then_recovers(gen_client, gen_db, sims):
    sims.chat.fail_next(2, status=429, retry_after=0.05)  # within GPT_MAX_RETRIES=2
    status, answer = post_generate(gen_client)
    assert status == 200
    check_rapid(answer, 2)
    assert [r.status for r in sims.chat.requests[:3]] == [429, 429, 200]
    (first,) = all_records(gen_db)
    (products,) = llm_steps(first, "rapid.products")
    assert first["status"] == "succeeded" and products["retries"] == 2 and products["error"] is None

    sims.chat.fail_next(3, status=429, retry_after=0.05)  # one more than the SDK retries
    status, answer = post_generate(gen_client)
    check_backend_failure(status, answer, "rapid.products: ")
    assert "rate limited (HTTP 429) after 2 retries" in answer["message"]
    second = all_records(gen_db)[1]
    assert second["status"] == "failed" and second["error"]["kind"] == "GPTRateLimited"
    (products,) = llm_steps(second, "rapid.products")
    assert products["retries"] == 2 and products["error"]

    status, answer = post_generate(gen_client)  # the 429s are over
    assert status == 200
    check_rapid(answer, 2)
    assert [r["status"] for r in all_records(gen_db)] == ["succeeded", "failed", "succeeded"]


def test_gpt_auth_failure_names_the_cause_never_the_key(make_gen_app, database_of, sims, caplog):
    wrong_key = "sk-wrong-7f3a9c1e5b"
    app = make_gen_app(AZURE_OPENAI_API_KEY=wrong_key)
    client = app.test_client()
    with caplog.at_level(logging.DEBUG):
        status, answer = post_generate(client)
    check_backend_failure(status, answer, "rapid.products: ")
    assert "key refused (HTTP 401" in answer["message"] and wrong_key not in answer["message"]
    assert [r.status for r in sims.chat.requests] == [401]  # an auth failure is not retried
    assert wrong_key not in caplog.text and wrong_key[-6:] not in caplog.text

    (record,) = all_records(database_of(app))
    assert record["status"] == "failed" and record["error"]["kind"] == "GPTAuthError"
    assert wrong_key not in json.dumps(record, default=str)
    assert client.post("/paint/start", json={"username": "alice"}).status_code == 200  # still serving
