"""The four /generate pipelines end to end over loopback HTTP to the GPT and SD simulators.

`generate(type, prompts)` runs a PaintApp on the real settings/ directory with a GPT client
and an SD pool on `sims` (three WebUI simulators), validating the prompts like the route.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from agent.errors import BackendError, GPTContentFiltered
from agent.gpt import GPTClient
from agent.pool import SDInstancePool
from apps.paint.pipelines import PaintApp
from apps.paint.pipelines.steps import AnswerCut, CheckFailed, RefusedInText, ShortAnswer
from apps.records import Trace
from simulators.chat import ChatSimulator, Scripted
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
def gpt(backends: Backends) -> GPTClient:
    """The GPT client of `backends`."""
    return backends.gpt


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


# -- structured outputs, answer checks and corrective retries -----------------------------------
def run_with(paint: PaintApp, gpt: GPTClient, backends: Backends, type_: int, prompts: dict[str, Any],
             *, sequential: bool = False) -> tuple[dict[str, Any], Trace]:
    """Run one pipeline with `gpt` (one step after another when `sequential`, so queued answers meet known steps)."""
    trace = Trace()
    answer = paint.run(type_, paint.read(type_, prompts), gpt, backends.pool, trace, sequential=sequential)
    return answer.model_dump(mode="json", by_alias=True), trace


def entries(trace: Trace, step: str) -> list[Any]:
    """Return the trace's LLM entries of `step`, in order."""
    return [entry for entry in trace.entries if entry.kind == "llm" and entry.step == step]


def as_json(**items: Any) -> Scripted:
    """Return a whole structured answer with these keys."""
    return Scripted(json.dumps(items, ensure_ascii=False))


LONG_NAME = "一款能够折叠收纳并自动记录每次训练次数的多功能家用健身训练凳"  # 30 characters for "5 到 8 个汉字"


def test_every_step_asks_with_its_schema_and_records_how_it_was_answered(generate, backends):
    _, trace = generate(1, deep_prompts())
    assert all(record.schema for record in backends.chat.requests)
    llm = [entry for entry in trace.entries if entry.kind == "llm"]
    assert {(e.protocol, e.finish_reason, e.reason, e.max_tokens) for e in llm} == {("structured", "stop", None, 2000)}
    for entry in llm:
        assert entry.usage["total_tokens"] > 0 and entry.checks[:2] == ["refusal", "count"] and entry.failed == []
    identify, = [e for e in llm if e.step == "deep.identify"]
    assert identify.checks == ["refusal", "count", "unidentifiable", "too_long", "sentence", "label", "markup",
                               "chatter", "clipped"]
    assert json.loads(identify.raw) == {"product": identify.items[0]}


@pytest.mark.parametrize("structured", ["auto", "off"])
def test_messy_answers_are_parsed_in_both_protocols(paint, make_gpt, backends, structured):
    backends.chat.messy = True
    data, trace = run_with(paint, make_gpt(GPT_STRUCTURED=structured), backends, 2, naming_prompts(5, 3))
    llm = [entry for entry in trace.entries if entry.kind == "llm"]
    assert {entry.protocol for entry in llm} == {"text" if structured == "off" else "structured"}
    assert all(entry.attempt == 1 and entry.failed == [] for entry in llm)
    assert len(data["selected"]) == 3 and set(data["selected"]) <= set(data["names"])
    assert all(name[0] not in "0123456789①-•“\"" for name in data["names"])


def test_a_deployment_that_refuses_schemas_is_asked_by_text_from_then_on(paint, make_gpt, backends):
    backends.chat.no_schema = {"gpt-4o"}
    gpt = make_gpt()
    data, trace = run_with(paint, gpt, backends, 0, {"task": TASK, "num": 2})
    assert data["count"] == 2
    requests = backends.chat.requests
    assert (requests[0].status, requests[0].schema) == (400, "rapid_products")
    assert [(r.status, r.schema) for r in requests[1:]] == [(200, None)] * 4  # remembered after the first
    assert {entry.protocol for entry in trace.entries if entry.kind == "llm"} == {"text"}
    assert gpt.snapshot()["protocols"]["gpt-4o"]["protocol"] == "text"


def test_a_failed_check_is_asked_again_once_saying_what_was_wrong(generate, backends):
    backends.chat.queue(as_json(item_1="折叠计数凳", item_2=LONG_NAME, item_3="夜行发光护膝"))
    data, trace = generate(2, naming_prompts(schemes=3, select=2))
    first, second = entries(trace, "naming.names")
    assert (first.attempt, first.reason, [f.check for f in first.failed]) == (1, None, ["too_long"])
    assert "item 2: 30 characters, asked for 5 to 8 characters" in first.error
    assert (second.attempt, second.reason, second.failed, second.error) == (2, "correction", [], None)
    assert second.prompt.startswith(first.prompt) and "第2项：有 30 个字" in second.prompt
    assert "5 到 8 个字" in second.prompt.removeprefix(first.prompt)
    assert backends.chat.requests[1].prompt == second.prompt and data["names"] == second.items
    assert LONG_NAME not in data["names"]


def test_a_second_failure_is_a_502_naming_the_step_and_the_check(generate, backends):
    bad = as_json(item_1="折叠计数凳", item_2=LONG_NAME, item_3="夜行发光护膝")
    backends.chat.queue(bad, bad)
    trace = Trace()
    with pytest.raises(CheckFailed) as caught:
        generate(2, naming_prompts(schemes=3), trace)
    error = caught.value
    assert not isinstance(error, ShortAnswer) and (error.step, error.http_status) == ("naming.names", 502)
    assert error.kind == "too_long"
    assert error.describe().startswith("naming.names: GPT's answer failed its checks again") and "too_long" in str(error)
    assert [e.attempt for e in trace.entries] == [1, 2] and backends.chat.calls == 2


def test_a_principle_may_not_name_its_product(paint, gpt, backends):
    product = "桌下静音踏步机"
    backends.chat.queue(as_json(item_1=product, item_2="智能计数跳绳"),
                        as_json(item_1=f"{product}：把微小的重复动作嵌入久坐时间", item_2="用计数反馈让训练看得见"))
    data, trace = run_with(paint, gpt, backends, 0, {"task": TASK, "num": 2}, sequential=True)
    first, second = entries(trace, "rapid.abstracts")
    assert {f.check for f in first.failed} >= {"product_named"} and second.failed == []
    assert f"出现了产品名称“{product}”" in second.prompt
    assert not any(product in card["items"][1]["text"] for card in data["result"])


@pytest.mark.parametrize("keywords, check", [
    ("折叠凳, 城市公园, morning light, minimal, wooden bench, soft shadows, wide angle, clean lines", "not_english"),
    ("folding bench, city park, morning light, minimal, wide angle, soft shadows, clean lines, Negative prompt: "
     "blurry", "sd_syntax"),
    ("(masterpiece:1.2), folding bench, city park, morning light, minimal, wide angle, soft shadows, clean lines",
     "sd_syntax"),
    ("folding bench, city park, morning light, minimal, wide angle, soft shadows, clean lines --ar 16:9", "sd_syntax"),
    ("folding bench, park", "keywords"),
])
def test_sd_prompts_must_be_plain_english_keywords(paint, gpt, backends, keywords, check):
    good = "folding bench, city park, morning light, minimal, wide angle, soft shadows, clean lines, photo"
    backends.chat.queue(None, None, None, as_json(item_1=keywords, item_2=good))  # products, abstracts, scenes
    data, trace = run_with(paint, gpt, backends, 0, {"task": TASK, "num": 2}, sequential=True)
    first, second = entries(trace, "rapid.sd_prompts")
    assert [f.check for f in first.failed] == [check] and second.failed == []
    prompts = [job.payload["prompt"] for sd in backends.sds for job in sd.jobs]
    assert len(prompts) == 2 and not any(keywords in prompt for prompt in prompts)


@pytest.mark.parametrize("structured, answer", [
    ("auto", as_json(product=None)),  # the schema's own "can't tell"
    ("off", Scripted("抱歉，我无法从这张草图中准确判断它画的是什么产品。")),
])
def test_identify_that_cannot_tell_is_asked_for_its_best_guess(paint, make_gpt, backends, structured, answer):
    backends.chat.queue(answer)
    data, trace = run_with(paint, make_gpt(GPT_STRUCTURED=structured), backends, 1, deep_prompts(), sequential=True)
    first, second = entries(trace, "deep.identify")
    assert first.failed[0].check == "unidentifiable" and second.failed == []
    assert "给出最可能的产品名称" in second.prompt and second.items and "抱歉" not in second.items[0]
    (products,) = entries(trace, "deep.products")
    assert f"设计者正在深化的方案：{second.items[0]}\n" in products.prompt and data["count"] == 3


def test_group_two_answers_one_list_per_scheme_in_scheme_order(paint, gpt, backends):
    scenes = {"scheme_1": {"item_1": "清晨的公园长椅旁，训练凳折叠后立在一边", "item_2": "客厅角落里，孩子用它记录跳绳的次数"},
              "scheme_2": {"item_1": "夜跑的河边步道上，护膝的灯带照亮前方", "item_2": "雨后的操场跑道边，灯光提醒来往的行人"}}
    backends.chat.queue(Scripted(json.dumps(scenes, ensure_ascii=False)))
    data, trace = run_with(paint, gpt, backends, 3, group_two_prompts(schemes=2, num=2), sequential=True)
    (entry,) = entries(trace, "group_two.scenes")
    flat = [text for scheme in scenes.values() for text in scheme.values()]
    assert entry.items == flat and len(data["result"]) == 4
    (prompts,) = entries(trace, "group_two.scene_prompts")
    assert all(f"{i}. {scene}\n" in prompts.prompt for i, scene in enumerate(flat, 1))


def test_a_cut_answer_is_asked_again_with_a_larger_budget(paint, make_gpt, backends):
    # A name answer is 19 to 22 characters of JSON (10 to 12 tokens): cut at 8 tokens, whole at 16.
    data, trace = run_with(paint, make_gpt(GPT_MAX_TOKENS=8), backends, 2, naming_prompts(schemes=1, select=1))
    for step in ("naming.names", "naming.select"):
        first, second = entries(trace, step)
        assert (first.finish_reason, first.max_tokens, first.items) == ("length", 8, None)
        assert "cut at max_tokens=8" in first.error
        assert (second.reason, second.finish_reason, second.max_tokens, second.error) == ("budget", "stop", 16, None)
    assert len(data["names"]) == 1 and data["selected"] == data["names"]


def test_an_answer_cut_twice_fails_naming_the_cause(generate, backends):
    backends.chat.script = Scripted('{"item_1": "可收', finish_reason="length")
    trace = Trace()
    with pytest.raises(AnswerCut) as caught:
        generate(2, naming_prompts(schemes=2), trace)
    assert (caught.value.step, caught.value.http_status, caught.value.kind) == ("naming.names", 502, "cut_off")
    assert "max_tokens=4000" in str(caught.value) and "GPT_MAX_TOKENS" in str(caught.value)
    assert [(e.max_tokens, e.reason) for e in trace.entries] == [(2000, None), (4000, "budget")]
    assert all(e.items is None for e in trace.entries)


def test_a_refusal_written_as_text_is_asked_again_then_a_decline(generate, backends):
    backends.chat.script = Scripted("抱歉，我无法协助完成这个请求。")
    trace = Trace()
    with pytest.raises(RefusedInText) as caught:
        generate(0, {"task": TASK, "num": 2}, trace)
    error = caught.value
    assert (error.kind, error.http_status, error.caused_by_input) == ("refusal", 422, True)
    assert [e.protocol for e in trace.entries] == ["text", "text"]  # JSON was asked for; the text is read as text


def test_a_filtered_prompt_is_a_decline_naming_the_step(generate, backends):
    backends.chat.filter_next(1)
    trace = Trace()
    with pytest.raises(GPTContentFiltered) as caught:
        generate(0, {"task": TASK, "num": 2}, trace)
    assert caught.value.step == "rapid.products" and caught.value.http_status == 422
    (entry,) = trace.entries
    assert "content filter" in entry.error and backends.chat.calls == 1
