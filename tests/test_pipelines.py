"""The four /generate pipelines end to end over loopback HTTP to the GPT and SD simulators.

`generate(type, prompts)` runs a PaintApp on the real settings/ directory with a GPT client
and an SD pool on `sims` (three WebUI simulators), validating the prompts like the route.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from agent.errors import BackendError
from agent.gpt import GPTClient
from agent.pool import SDInstancePool
from apps.paint.pipelines import PaintApp
from apps.paint.pipelines.steps import ShortAnswer
from apps.records import Trace
from simulators.chat import ChatSimulator
from simulators.png import read_png_header
from simulators.webui import SDWebUISimulator
from tests.helpers import SKETCH, TASK, Worker, check_item, decode_png, wait_until


@dataclass
class Backends:
    """The simulators and clients one test generates with."""

    chat: ChatSimulator
    sds: list[SDWebUISimulator]
    gpt: GPTClient
    pool: SDInstancePool


@pytest.fixture
def backends(sims, make_gpt, sd_pools) -> Backends:
    """Three SD simulators in a pool and a GPT client, all on loopback."""
    return Backends(sims.chat, sims.sds, make_gpt(), sd_pools([sd.url for sd in sims.sds]))


@pytest.fixture
def generate(paint: PaintApp, backends: Backends) -> Callable[..., tuple[dict[str, Any], Trace]]:
    """Return `generate(type, prompts)` -> (data, trace), validating like the route does."""

    def run(type_: int, prompts: dict[str, Any], trace: Trace | None = None) -> tuple[dict[str, Any], Trace]:
        trace = trace if trace is not None else Trace()
        request = paint.read(type_, prompts)
        answer = paint.run(type_, request, backends.gpt, backends.pool, trace)
        return answer.model_dump(mode="json", by_alias=True), trace

    return run


def deep_prompts(scheme_id: Any = 2, texts: list[str] | None = None) -> dict[str, Any]:
    """Return type 1 prompts as the client sends them."""
    return {"designTask": TASK, "designTexts": ["可折叠", "带计数"] if texts is None else texts,
            "designImage": SKETCH, "schemeId": scheme_id}


def naming_prompts(schemes: int = 4, select: int = 2) -> dict[str, Any]:
    """Return type 2 prompts with `schemes` sketches."""
    return {"designTask": TASK, "selectNum": select,
            "schemes": [{"designTexts": [f"标注{i}"], "designImage": SKETCH} for i in range(schemes)]}


def group_two_prompts(schemes: int = 1, num: int = 3) -> dict[str, Any]:
    """Return type 3 prompts with `schemes` selected schemes."""
    return {"selectedSchemes": [{"designTexts": [f"方案{i}", "轻便"]} for i in range(schemes)], "num": num}


def steps_of(trace: Trace, kind: str) -> list[str]:
    """Return the step names of the trace's `kind` entries, in order."""
    return [entry.step for entry in trace.entries if entry.kind == kind]


def test_rapid_divergence_answers_num_sequence_cards(generate, backends):
    data, trace = generate(0, {"task": TASK, "num": 4})
    assert set(data) == {"count", "result"} and data["count"] == 4 and len(data["result"]) == 4
    for card in data["result"]:
        assert set(card) == {"type", "displayType", "items"}
        assert (card["type"], card["displayType"]) == (0, "sequence")
        assert [item["type"] for item in card["items"]] == ["abstractImage", "abstractText"]
        check_item(card["items"][0], "abstractImage")
        check_item(card["items"][1], "abstractText")
    assert read_png_header(decode_png(data["result"][0]["items"][0]["image"])) == (1024, 576)
    assert len({card["items"][0]["image"] for card in data["result"]}) == 4
    assert sorted(steps_of(trace, "llm")) == ["rapid.abstracts", "rapid.products", "rapid.scenes",
                                              "rapid.sd_prompts"]
    assert sorted(steps_of(trace, "image")) == [f"rapid.scene_images[{i}]" for i in range(4)]


def test_sd_payloads_carry_the_study_defaults_and_prompt_suffixes(generate, backends):
    generate(3, group_two_prompts(schemes=1, num=1))
    jobs = [job for sd in backends.sds for job in sd.jobs]
    assert len(jobs) == 2
    for job in jobs:
        payload = job.payload
        assert payload["override_settings"]["sd_model_checkpoint"] == "sd_xl_base_1.0.safetensors"
        assert (payload["width"], payload["height"], payload["cfg_scale"], payload["steps"]) == (1024, 576, 5, 30)
        assert payload["sampler_name"] == "DPM++ 2M SDE Karras" and payload["styles"] == ["photographic"]
        assert "photorealistic" in payload["prompt"] and "highly detailed" in payload["prompt"]
        assert all(word in payload["negative_prompt"] for word in ("people", "text", "watermark", "cartoon"))
        assert not any("\u4e00" <= ch <= "\u9fff" for ch in payload["prompt"])  # English keywords
    products = [job.payload for job in jobs if "white background" in job.payload["prompt"]]
    assert len(products) == 1 and "industrial design" in products[0]["prompt"]


def test_deep_divergence_echoes_scheme_id_and_names_the_sketch_by_vision(generate, backends):
    data, trace = generate(1, deep_prompts(scheme_id="sketch-7"))
    assert set(data) == {"schemeId", "count", "result"}
    assert data["schemeId"] == "sketch-7" and data["count"] == 3 and len(data["result"]) == 3
    for card in data["result"]:
        assert (card["type"], card["displayType"]) == (2, "sequence")
        kinds = ["abstractImage", "abstractText", "concreteText"]
        assert [item["type"] for item in card["items"]] == kinds
        for item, kind in zip(card["items"], kinds, strict=True):
            check_item(item, kind)
    identify = [entry for entry in trace.entries if entry.step == "deep.identify"]
    assert len(identify) == 1 and len(identify[0].images) == 1 and len(identify[0].images[0]) == 64
    vision = [r for r in backends.chat.requests if r.images]
    assert len(vision) == 1 and "可折叠" in vision[0].prompt
    assert generate(1, deep_prompts(scheme_id=0))[0]["schemeId"] == 0


@pytest.mark.parametrize("schemes, select, expected", [(4, 2, 2), (3, 3, 3), (2, 5, 2), (1, 1, 1)])
def test_naming_gives_a_name_per_scheme_and_selects_among_them(generate, backends, schemes, select, expected):
    data, trace = generate(2, naming_prompts(schemes=schemes, select=select))
    assert set(data) == {"names", "selected"}
    assert len(data["names"]) == schemes and all(isinstance(n, str) and n for n in data["names"])
    assert len(data["selected"]) == expected == len(set(data["selected"]))
    assert set(data["selected"]) <= set(data["names"])
    assert steps_of(trace, "llm") == ["naming.names", "naming.select"]
    assert backends.chat.requests[0].images == schemes
    assert f"候选：{'#'.join(data['names'])}" in backends.chat.requests[1].prompt


@pytest.mark.parametrize("schemes, num", [(1, 3), (2, 2), (3, 1)])
def test_group_two_gives_schemes_times_num_direct_cards(generate, backends, schemes, num):
    data, trace = generate(3, group_two_prompts(schemes=schemes, num=num))
    assert set(data) == {"result"} and len(data["result"]) == schemes * num
    for card in data["result"]:
        assert (card["type"], card["displayType"]) == (4, "direct") and len(card["items"]) == 1
        group = card["items"][0]
        assert group == {"type": "groupTypeTwo", "text": None, "image": None,
                         "combinations": group["combinations"]}
        kinds = ["abstractImage", "concreteImage", "concreteText"]
        assert [item["type"] for item in group["combinations"]] == kinds
        for item, kind in zip(group["combinations"], kinds, strict=True):
            check_item(item, kind)
    assert len(steps_of(trace, "image")) == 2 * schemes * num


def test_independent_gpt_steps_run_at_the_same_time(generate, backends):
    chat = backends.chat
    chat.hang_next(3)  # products, then abstracts and scenes
    worker = Worker(lambda: generate(0, {"task": TASK, "num": 2}))
    worker.start()
    wait_until(lambda: chat.held == 1, what="the products call")
    chat.release(1)
    wait_until(lambda: chat.held == 2, what="abstracts and scenes held together")
    chat.release()
    data, _ = worker.outcome()
    assert data["count"] == 2


def test_image_jobs_of_a_request_are_in_flight_together(generate, backends):
    for sd in backends.sds:
        sd.hang(10)
    worker = Worker(lambda: generate(3, group_two_prompts(schemes=3, num=1)))
    worker.start()
    wait_until(lambda: all(sd.max_in_flight == 1 for sd in backends.sds), what="one job on every instance")
    for sd in backends.sds:
        sd.release()
    data, _ = worker.outcome()
    assert len(data["result"]) == 3
    assert sum(len(sd.jobs) for sd in backends.sds) == 6


def test_short_answer_is_asked_again_once(generate, backends):
    backends.chat.short_next(1)
    data, trace = generate(0, {"task": TASK, "num": 3})
    assert data["count"] == 3
    products = [e for e in trace.entries if e.step == "rapid.products"]
    assert [(e.attempt, len(e.items)) for e in products] == [(1, 2), (2, 3)]
    assert "asked for 3 items, got 2" in products[0].error and products[1].error is None


def test_short_twice_fails_naming_the_step(generate, backends):
    backends.chat.short_next(2)
    trace = Trace()
    with pytest.raises(ShortAnswer) as caught:
        generate(2, naming_prompts(schemes=4), trace)
    error = caught.value
    assert error.step == "naming.names" and error.http_status in (502, 503)
    assert error.describe().startswith("naming.names: ") and "asked for 4 items, got 3" in str(error)
    assert [e.attempt for e in trace.entries] == [1, 2] and backends.chat.calls == 2


@pytest.mark.parametrize("type_, prompts", [
    (0, {"task": TASK, "num": 5}), (1, deep_prompts()), (2, naming_prompts(schemes=5, select=3)),
    (3, group_two_prompts(schemes=2, num=2)),
])
def test_messy_answers_are_parsed(generate, backends, type_, prompts):
    backends.chat.messy = True
    data, trace = generate(type_, prompts)
    texts = [e for entry in trace.entries if entry.kind == "llm" for e in entry.items]
    assert texts and all(t == t.strip() and t[0] not in "0123456789①-•“\"" for t in texts)
    assert all(entry.attempt == 1 for entry in trace.entries if entry.kind == "llm")
    if type_ == 2:
        assert len(data["selected"]) == 3 and set(data["selected"]) <= set(data["names"])


def test_gpt_failure_mid_pipeline_names_the_step_and_stops_later_steps(generate, backends):
    chat = backends.chat
    chat.hang_next(1)  # hold the vision call, then make the next call fail
    trace = Trace()
    worker = Worker(lambda: generate(1, deep_prompts(), trace))
    worker.start()
    wait_until(lambda: chat.held == 1, what="the identify call")
    chat.fail_next(1, status=500)
    chat.release()
    with pytest.raises(BackendError) as caught:
        worker.outcome()
    assert caught.value.step == "deep.products" and caught.value.http_status == 503
    assert caught.value.describe().startswith("deep.products: ")
    failed = [e for e in trace.entries if e.error]
    assert [(e.kind, e.step) for e in failed] == [("llm", "deep.products")]
    assert "500" in failed[0].error and failed[0].raw is None
    assert steps_of(trace, "llm") == ["deep.identify", "deep.products"] and not steps_of(trace, "image")
    assert all(not sd.jobs for sd in backends.sds)


def test_one_dead_sd_instance_is_worked_around(generate, backends):
    backends.sds[0].refuse()
    data, trace = generate(0, {"task": TASK, "num": 3})
    assert data["count"] == 3
    images = [e for e in trace.entries if e.kind == "image"]
    assert all(e.error is None for e in images)
    assert sum(e.attempts - 1 for e in images) == 1 and any(e.errors for e in images)
    assert not backends.sds[0].jobs


def test_every_sd_instance_failing_names_the_image_step(generate, backends):
    for sd in backends.sds:
        sd.fail()
    trace = Trace()
    with pytest.raises(BackendError) as caught:
        generate(0, {"task": TASK, "num": 2}, trace)
    assert caught.value.step in ("rapid.scene_images[0]", "rapid.scene_images[1]")
    failed = [e for e in trace.entries if e.kind == "image" and e.error]
    assert failed and all(e.image is None and e.payload["prompt"] for e in failed)
    assert caught.value.step in [e.step for e in failed]


def test_trace_has_an_entry_per_llm_step_and_image_job(generate, backends):
    data, trace = generate(1, deep_prompts())
    llm = {e.step: e for e in trace.entries if e.kind == "llm"}
    assert set(llm) == {f"deep.{s}" for s in ("identify", "products", "scenes", "sd_prompts",
                                              "abstracts", "concretes")}
    for step, entry in llm.items():
        assert entry.template == f"settings/{step.replace('.', '/')}.j2"
        assert entry.prompt and entry.raw and entry.items and entry.attempt == 1
        assert entry.deployment == backends.gpt.chat_deployment and entry.latency >= 0
        assert entry.error is None and isinstance(entry.retries, int)
    images = sorted((e for e in trace.entries if e.kind == "image"), key=lambda e: e.step)
    returned = [card["items"][0]["image"] for card in data["result"]]
    assert [e.image.b64() for e in images] == returned
    for entry in images:
        assert entry.instance and entry.info["width"] == 1024 and entry.attempts == 1
        assert entry.payload["prompt"] and entry.queue_wait >= 0 and entry.error is None
    assert llm["deep.abstracts"].items == [card["items"][1]["text"] for card in data["result"]]


# Words that only the prompt of settings/rapid/abstracts.j2 has, to tell its call from the scenes one.
ABSTRACTS_ONLY = "工作原理"


def test_failure_in_a_side_branch_stops_the_main_chain(generate, backends):
    chat = backends.chat
    chat.hang_next(3)  # products, then abstracts (a side branch) and scenes (the main chain)
    trace = Trace()
    worker = Worker(lambda: generate(0, {"task": TASK, "num": 2}, trace))
    worker.start()
    wait_until(lambda: chat.held == 1, what="the products call")
    chat.release(1)
    wait_until(lambda: chat.held == 2, what="abstracts and scenes calling together")
    chat.fail_held(ABSTRACTS_ONLY, status=500)
    # The flow notes a failure before tracing it: from here no step may start.
    wait_until(lambda: any(e.error for e in trace.entries), what="the abstracts failure")
    chat.release()  # scenes was in flight: it finishes, and the chain after it is skipped
    with pytest.raises(BackendError) as caught:
        worker.outcome()
    assert caught.value.step == "rapid.abstracts" and caught.value.http_status == 503
    assert sorted(steps_of(trace, "llm")) == ["rapid.abstracts", "rapid.products", "rapid.scenes"]
    assert [e.step for e in trace.entries if e.error] == ["rapid.abstracts"]
    assert chat.calls == 3 and all(not sd.jobs for sd in backends.sds)  # no sd_prompts, no image


def test_sequential_mode_runs_one_step_at_a_time(paint, backends):
    request = paint.read(3, group_two_prompts(schemes=2, num=1))
    answer = paint.run(3, request, backends.gpt, backends.pool, Trace(), sequential=True)
    assert len(answer.result) == 2
    assert backends.chat.peak_in_flight == 1
    assert max(sd.max_in_flight for sd in backends.sds) == 1 and sum(len(sd.jobs) for sd in backends.sds) == 4
