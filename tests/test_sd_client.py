"""The WebUI client sends the options it is given and turns every failure into a typed, credential-free error."""
from __future__ import annotations

import base64

import pytest

from agent.errors import (
    BackendError, BackendTimeout, SDBadRequest, SDBadResponse, SDConnectionError, SDServerError, SDTimeout,
)
from agent.sd import SDEndpoint, build_payload, interrupt, ping, progress, text2Image
from apps.paint.pipelines import SETTINGS_DIR
from apps.paint.pipelines.settings import load_sd_options
from simulators.http import Reply, serve
from simulators.png import read_png_header, render_png
from tests.helpers import Worker, small_payload, wait_until

PASSWORD = "s3cret-pw"
PNG_B64 = base64.b64encode(render_png(4, 4, "stub")).decode()


@pytest.fixture
def stub():
    """Return a starter of one-route stub servers answering `(status, body)` to every request."""
    listeners = []

    def start(status, body, ping_status=200):
        def route(request):
            return Reply(ping_status, {}) if request.path == "/internal/ping" else Reply(status, body)
        listener = serve(route, "stub")
        listeners.append(listener)
        return listener.url

    yield start
    for listener in listeners:
        listener.close()
        listener.join()


def test_payload_sends_only_the_options_given():
    assert build_payload("a red kettle", "people, text", {}) == {"prompt": "a red kettle",
                                                                 "negative_prompt": "people, text"}


def test_payload_of_the_settings_file_is_the_study_settings():
    payload = build_payload("a red kettle", "people, text", load_sd_options(SETTINGS_DIR)[("rapid", "scene")])
    assert payload == {
        "prompt": "a red kettle", "negative_prompt": "people, text",
        "width": 1024, "height": 576, "cfg_scale": 5, "steps": 30,
        "sampler_name": "DPM++ 2M SDE Karras", "styles": ["photographic"],
        "n_iter": 1, "batch_size": 1, "seed": -1,
        "override_settings": {"sd_model_checkpoint": "sd_xl_base_1.0.safetensors"},
    }
    assert "Model" not in payload and "checkpoint" not in payload


def test_payload_shorthands_become_webui_names():
    payload = build_payload("x", "", {"checkpoint": "other.safetensors", "style": "cinematic",
                                      "steps": 12, "enable_hr": True})
    assert payload["override_settings"] == {"sd_model_checkpoint": "other.safetensors"}
    assert (payload["styles"], payload["steps"], payload["enable_hr"]) == (["cinematic"], 12, True)


def test_payload_never_shares_values_with_the_options():
    options = {"styles": ["photographic"], "override_settings": {"CLIP_stop_at_last_layers": 2}}
    payload = build_payload("x", "", options)
    payload["styles"].append("mutated")
    payload["override_settings"]["mutated"] = True
    assert options == {"styles": ["photographic"], "override_settings": {"CLIP_stop_at_last_layers": 2}}


@pytest.mark.parametrize("key", ["Model", "model", "colour", "prompt", "mask_blur", "init_images"])
def test_unknown_option_keys_raise_value_error_naming_them(key):
    with pytest.raises(ValueError, match=repr(key)):
        build_payload("x", "", {key: 1})


def test_endpoint_keeps_credentials_out_of_its_name_and_repr():
    endpoint = SDEndpoint.parse(f"http://alice:{PASSWORD.replace('-', '%2D')}@gpu1:7860/")
    assert endpoint.auth == ("alice", PASSWORD)
    assert (endpoint.base_url, endpoint.name) == ("http://gpu1:7860", "gpu1:7860")
    assert PASSWORD not in repr(endpoint) and PASSWORD not in str(endpoint)
    assert SDEndpoint.parse("http://gpu2:7861").auth is None
    with pytest.raises(ValueError) as bad:
        SDEndpoint.parse(f"gpu1:{PASSWORD}@nowhere")
    assert PASSWORD not in str(bad.value)


def test_text2image_returns_decoded_pngs_and_info(sd_sims):
    sim = sd_sims()
    images, info = text2Image(sim.url, small_payload(seed=7, batch_size=2), timeout=5)
    assert [(image.content_type, read_png_header(image.data)) for image in images] == [("image/png", (16, 8))] * 2
    assert info["seed"] == 7 and info["all_seeds"] == [7, 8]


def test_basic_auth_comes_from_the_endpoint_url(sd_sims):
    sim = sd_sims(auth=("alice", PASSWORD))
    images, _ = text2Image(sim.endpoint, small_payload(), timeout=5)
    assert images
    with pytest.raises(SDServerError) as wrong:
        text2Image(sim.url.replace("http://", "http://alice:nope@"), small_payload(), timeout=5)
    assert wrong.value.status == 401


def test_probe_sends_basic_auth_on_get_too():
    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()

    def route(request):  # a WebUI without /internal/ping
        if request.path == "/sdapi/v1/progress" and request.method == "GET":
            authorized = request.headers.get("Authorization") == expected
            return Reply(200, {"progress": 0.0}) if authorized else Reply(401, {"detail": "no"})
        return Reply(404, {"detail": "Not Found"})

    listener = serve(route, "stub")
    try:
        url = f"http://127.0.0.1:{listener.port}"
        ping(url.replace("http://", f"http://alice:{PASSWORD}@"), timeout=2)
        with pytest.raises(SDServerError) as refused:
            ping(url, timeout=2)
        assert refused.value.status == 401
    finally:
        listener.close()
        listener.join()


def test_refused_connection_is_sd_connection_error(sd_sims):
    sim = sd_sims()
    sim.refuse()
    with pytest.raises(SDConnectionError, match="refused") as refused:
        text2Image(sim.url, small_payload(), timeout=2)
    assert isinstance(refused.value, BackendError) and refused.value.backend == "sd"
    assert sim.url.removeprefix("http://") in str(refused.value)


def test_connection_dropped_without_an_answer_is_sd_connection_error(stub):
    with pytest.raises(SDConnectionError, match="connection (reset|closed)"):
        text2Image(stub(None, None), small_payload(), timeout=2)


def test_slow_answer_is_sd_timeout(sd_sims):
    sim = sd_sims()
    sim.hang()
    with pytest.raises(SDTimeout, match="no answer within 0.2s") as slow:
        text2Image(sim.url, small_payload(), timeout=(1.0, 0.2))
    assert isinstance(slow.value, BackendTimeout) and slow.value.http_status == 504


def test_server_failure_is_sd_server_error_with_status(sd_sims):
    sim = sd_sims()
    sim.fail()
    with pytest.raises(SDServerError, match="HTTP 500") as failed:
        text2Image(sim.url, small_payload(), timeout=5)
    assert failed.value.status == 500


def test_rejected_payload_is_sd_bad_request(sd_sims):
    sim = sd_sims()
    with pytest.raises(SDBadRequest, match="width") as rejected:
        text2Image(sim.url, small_payload(width=0), timeout=5)
    assert rejected.value.status == 422


@pytest.mark.parametrize("body", [
    {"images": []}, {"images": [""]}, {"images": ["not base64!"]},
    {"images": [base64.b64encode(b"plain text").decode()]}, {"info": "{}"}, ["images"], b"<html>oops</html>",
])
def test_answers_without_a_real_image_are_sd_bad_response(stub, body):
    with pytest.raises(SDBadResponse):
        text2Image(stub(200, body), small_payload(), timeout=5)


def test_data_uri_images_are_decoded_like_raw_base64(stub):
    images, info = text2Image(stub(200, {"images": ["data:image/png;base64," + PNG_B64], "info": "bad"}),
                              small_payload(), timeout=5)
    assert [(image.content_type, image.b64()) for image in images] == [("image/png", PNG_B64)] and info == {}


def test_ping_falls_back_to_progress_when_internal_ping_is_missing(stub):
    ping(stub(200, {"progress": 0.0}, ping_status=404), timeout=2)
    with pytest.raises(SDServerError):
        ping(stub(500, {}, ping_status=404), timeout=2)


def test_credentials_never_appear_in_error_messages(sd_sims, stub):
    sim = sd_sims(auth=("alice", PASSWORD))
    errors = []
    for fault in ("fail", "hang", "refuse"):
        getattr(sim, fault)()
        try:
            text2Image(sim.endpoint, small_payload(), timeout=(1.0, 0.2))
        except BackendError as e:
            errors.append(e)
        sim.heal()
    bad = stub(200, {"images": [""]}).replace("http://", f"http://alice:{PASSWORD}@")
    for endpoint, payload in ((bad, small_payload()), (sim.endpoint, small_payload(width=0))):
        try:
            text2Image(endpoint, payload, timeout=2)
        except BackendError as e:
            errors.append(e)
    assert [type(e) for e in errors] == [SDServerError, SDTimeout, SDConnectionError, SDBadResponse, SDBadRequest]
    for error in errors:
        assert PASSWORD not in str(error) and PASSWORD not in repr(error) and PASSWORD not in str(error.__cause__)
        assert "SD instance 127.0.0.1:" in str(error)


def test_progress_reads_the_running_job_and_its_preview_only_when_asked(sd_sims):
    sim = sd_sims(per_step=0.02)
    assert progress(sim.url, timeout=2) == (False, 0.0, 0.0, 0, 0, None)
    sim.hang()
    worker = Worker(lambda: text2Image(sim.url, small_payload(steps=20), timeout=5))
    worker.start()
    held = wait_until(lambda: progress(sim.url, timeout=2).running, what="the job to start")
    assert held and progress(sim.url, skip_current_image=False, timeout=2).preview is None  # nothing sampled yet
    sim.release()
    seen = wait_until(lambda: (p := progress(sim.url, timeout=2)).step >= 2 and p, what="two sampled steps")
    assert seen.running and seen.steps == 20 and 0 < seen.progress < 1 and seen.eta > 0 and seen.preview is None
    worker.outcome()


def test_interrupt_ends_the_running_job_and_its_errors_are_typed(sd_sims, stub):
    sim = sd_sims(per_step=0.05)
    worker = Worker(lambda: text2Image(sim.url, small_payload(steps=40), timeout=5))
    worker.start()
    wait_until(lambda: progress(sim.url, timeout=2).step >= 1, what="the job to sample")
    interrupt(sim.url, timeout=2)
    assert worker.outcome().images and sim.jobs[0].interrupted and len(sim.interrupts) == 1
    with pytest.raises(SDBadResponse, match="progress report"):
        progress(stub(200, ["not", "progress"]), timeout=2)
    sim.refuse()
    with pytest.raises(SDConnectionError, match="refused"):
        interrupt(sim.url, timeout=2)
