"""What an operator sees: /healthz, /readyz and /metrics over the real store and the simulators.

Each failure is made for real (a closed port, a refused WebUI, a chat simulator answering
429) and the test checks that /readyz and /metrics name the backend that is failing, with
labels an alert rule can use, and never a key or a password.
"""
from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.embedded_store import free_port
from core.monitoring import RecentFailures, step_label
from simulators.webui import SDWebUISimulator
from tests.helpers import PROMPTS, SIM_KEY, body

ENVELOPE = {"success", "data", "code", "message"}


def scrape(client) -> dict[tuple[str, frozenset], float]:
    """Return every sample of GET /metrics, keyed by sample name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    found = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def series(samples, name: str, **labels: str) -> dict[frozenset, float]:
    """Return the samples called `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return {key: value for (sample, key), value in samples.items() if sample == name and wanted <= key}


def value(samples, name: str, **labels: str) -> float:
    """Return the one sample called `name` with exactly `labels`."""
    return samples[(name, frozenset(labels.items()))]


def names(sims) -> list[str]:
    """Return the instance names the pool shows for the simulators: host:port, no credentials."""
    return [f"{sd.host}:{sd.port}" for sd in sims.sds]


def test_healthz_is_alive_without_touching_the_database(make_app):
    client = make_app(MONGO_URI=f"mongodb://127.0.0.1:{free_port()}/").test_client()
    answer = client.get("/healthz").get_json()
    assert answer == {"success": True, "data": {"status": "alive"}, "code": 0, "message": ""}


def test_readyz_ready_with_everything_up(gen_client, sims):
    response = gen_client.get("/readyz")
    answer = response.get_json()
    assert response.status_code == 200 and set(answer) == ENVELOPE
    assert answer["success"] is True and answer["message"] == "ready"
    data = answer["data"]
    assert data["database"] == {"reachable": True}
    assert (data["sd"]["total"], data["sd"]["healthy"], data["sd"]["busy"]) == (3, 3, 0)
    assert [i["name"] for i in data["sd"]["instances"]] == names(sims)
    assert {i["state"] for i in data["sd"]["instances"]} == {"idle"}
    gpt = data["gpt"]
    assert gpt["configured"] is True and gpt["provider"] == "azure" and gpt["chat_deployment"] == "gpt-4o"
    assert gpt["recent_failures"] == {}


def test_readyz_names_an_unreachable_database_within_seconds(make_gen_app):
    # A 10 s MONGO_TIMEOUT_MS shows the probe uses its own short timeout instead.
    app = make_gen_app(MONGO_URI=f"mongodb://127.0.0.1:{free_port()}/", MONGO_TIMEOUT_MS=10_000)
    started = time.monotonic()
    response = app.test_client().get("/readyz")
    elapsed = time.monotonic() - started
    answer = response.get_json()
    assert response.status_code == 503 and answer["success"] is False and answer["code"] == 3
    assert answer["message"] == "not ready: database unreachable"
    assert answer["data"]["database"] == {"reachable": False} and answer["data"]["sd"]["healthy"] == 3
    assert elapsed < 5, elapsed  # far below the 10 s the store's own timeout would take


def test_a_dead_sd_instance_shows_in_readyz_and_metrics(gen_client, sims):
    dead = names(sims)[0]
    sims.sds[0].refuse()
    assert gen_client.post("/generate", json=body(0, PROMPTS[0])).status_code == 200  # failed over

    answer = gen_client.get("/readyz").get_json()
    assert answer["success"] is True
    assert answer["message"] == f"ready; degraded: 2 of 3 SD instances healthy (down: {dead})"
    first = answer["data"]["sd"]["instances"][0]
    assert first["name"] == dead and first["state"] == "cooldown" and not first["healthy"]
    assert dead in first["last_error"] and first["cooldown_remaining"] > 0

    samples = scrape(gen_client)
    assert value(samples, "refinity_sd_instance_failures_total", instance=dead) == 1
    assert value(samples, "refinity_sd_instance_cooldowns_total", instance=dead) == 1
    assert value(samples, "refinity_sd_instance_healthy", instance=dead) == 0
    assert value(samples, "refinity_sd_instance_jobs_total", instance=dead) == 0
    assert value(samples, "refinity_sd_instances_healthy") == 2


def test_readyz_is_503_when_every_sd_instance_is_down(gen_client, sims):
    for sd in sims.sds:
        sd.refuse()
    assert gen_client.post("/generate", json=body(0, PROMPTS[0])).status_code == 503
    response = gen_client.get("/readyz")
    answer = response.get_json()
    assert response.status_code == 503 and answer["code"] == 2
    assert answer["message"] == f"not ready: 0 of 3 SD instances healthy (down: {', '.join(names(sims))})"
    assert all(i["last_error"] for i in answer["data"]["sd"]["instances"])


def test_readyz_is_503_when_gpt_is_not_configured(make_gen_app):
    client = make_gen_app(AZURE_OPENAI_ENDPOINT=None, AZURE_OPENAI_API_KEY=None).test_client()
    response = client.get("/readyz")
    answer = response.get_json()
    assert response.status_code == 503 and answer["code"] == 2
    assert answer["message"].startswith("not ready: GPT not configured: set AZURE_OPENAI_ENDPOINT")
    assert answer["data"]["gpt"]["configured"] is False and answer["data"]["gpt"]["provider"] == "none"


def test_readyz_is_503_when_no_sd_instance_is_configured(make_gen_app):
    response = make_gen_app(SD_ENDPOINTS=[]).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["message"] == "not ready: no SD instances configured (set SD_ENDPOINTS)"


def test_metrics_after_a_generation(gen_client, sims):
    assert gen_client.post("/generate", json=body(0, PROMPTS[0])).status_code == 200
    samples = scrape(gen_client)

    assert value(samples, "refinity_http_requests_total", route="/generate", method="POST", status="200") == 1
    assert value(samples, "refinity_http_request_duration_seconds_count", route="/generate") == 1
    assert value(samples, "refinity_pipeline_duration_seconds_count", appid="0", type="0", status="ok") == 1
    steps = series(samples, "refinity_step_duration_seconds_count")
    by_step = {(dict(labels)["kind"], dict(labels)["step"]): n for labels, n in steps.items()}
    assert by_step == {("llm", "rapid.products"): 1, ("llm", "rapid.abstracts"): 1, ("llm", "rapid.scenes"): 1,
                       ("llm", "rapid.sd_prompts"): 1, ("image", "rapid.scene_images"): 6}

    assert value(samples, "refinity_sd_instances") == 3 and value(samples, "refinity_sd_instances_healthy") == 3
    assert value(samples, "refinity_sd_instances_busy") == 0 and value(samples, "refinity_sd_jobs_waiting") == 0
    assert ("refinity_sd_queue_wait_seconds_total", frozenset()) in samples
    jobs = series(samples, "refinity_sd_instance_jobs_total")
    assert {dict(labels)["instance"] for labels in jobs} == set(names(sims)) and sum(jobs.values()) == 6
    assert value(samples, "refinity_gpt_configured", provider="azure") == 1
    assert value(samples, "refinity_gpt_calls_total", deployment="gpt-4o") == 4
    assert value(samples, "refinity_gpt_in_flight", deployment="gpt-4o") == 0
    assert series(samples, "refinity_gpt_failures_total") == {}


def test_a_failed_generation_is_observed_as_failed(gen_client, sims):
    sims.chat.fail_next(10, status=429, retry_after=0.001)  # beyond GPT_MAX_RETRIES=1
    assert gen_client.post("/generate", json=body(2, PROMPTS[2])).status_code == 503
    samples = scrape(gen_client)
    assert value(samples, "refinity_pipeline_duration_seconds_count", appid="0", type="2", status="failed") == 1
    assert value(samples, "refinity_gpt_failures_total", deployment="gpt-4o", kind="rate_limited") == 1
    assert value(samples, "refinity_gpt_retries_total", deployment="gpt-4o") == 1
    answer = gen_client.get("/readyz").get_json()
    assert answer["success"] is True and answer["data"]["gpt"]["recent_failures"] == {"rate_limited": 1}
    assert answer["message"].startswith("ready; degraded: GPT failures in the last ")
    assert answer["message"].endswith(" s: rate_limited=1")


def test_a_gpt_429_that_a_retry_absorbs_counts_as_a_retry(gen_client, sims):
    sims.chat.fail_next(1, status=429, retry_after=0.001)
    assert gen_client.post("/generate", json=body(2, PROMPTS[2])).status_code == 200
    samples = scrape(gen_client)
    assert value(samples, "refinity_gpt_retries_total", deployment="gpt-4o") == 1
    assert series(samples, "refinity_gpt_failures_total") == {}


def test_no_key_token_or_password_is_exposed(make_gen_app, sims):
    with SDWebUISimulator(auth=("operator", "pw-never-shown")) as locked:
        locked.refuse()  # its failures end up in last_error, which must not carry the password
        token = "op-token-never-shown"
        app = make_gen_app(API_TOKEN=token, SD_ENDPOINTS=[locked.endpoint, sims.sds[0].endpoint])
        client = app.test_client()
        auth = {"Authorization": f"Bearer {token}"}
        assert client.post("/generate", json=body(0, PROMPTS[0]), headers=auth).status_code == 200
        ready = client.get("/readyz", headers=auth).get_data(as_text=True)  # details: researchers only
        text = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert f"{locked.host}:{locked.port}" in ready and "cooldown" in ready
    for secret in (SIM_KEY, token, "pw-never-shown", "operator:"):
        assert secret not in ready and secret not in text


@pytest.mark.parametrize("step, label", [("rapid.scene_images[2]", "rapid.scene_images"),
                                         ("deep.products", "deep.products"), (None, "unknown")])
def test_step_labels_drop_indices(step, label):
    assert step_label(step) == label


def test_recent_failures_cover_about_the_window():
    now = [0.0]
    recent = RecentFailures(window=300, every=10, clock=lambda: now[0])
    assert recent.update({"timeout": 2}) == ({"timeout": 2}, 0)
    now[0] = 200
    assert recent.update({"timeout": 3}) == ({"timeout": 3}, 200)
    now[0] = 600  # the failures counted by t=200 are older than the window now
    assert recent.update({"timeout": 3, "auth": 1}) == ({"auth": 1}, 400)
    now[0] = 605
    assert recent.update({"timeout": 3, "auth": 1}) == ({"auth": 1}, 405)
