"""The chat simulator's realistic mode over loopback HTTP, and the real pipelines against it.

With a fixed seed the simulator's deviations are fixed too, so these tests are deterministic:
every kind `simulators.chat` lists shows up, and every generation the pipelines run on such
answers gives clean items or fails cleanly, naming its step, never an item still decorated.
"""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from agent.errors import BackendError
from apps.records import Trace
from simulators.chat import FAILURES, JSON_DECORATIONS, TEXT_DECORATIONS, ChatSimulator, Realistic
from tests.helpers import SIM_KEY, TASK
from tests.test_gpt_simulator import ask, azure, schema_format
from tests.test_pipelines import backends, deep_prompts, group_two_prompts, naming_prompts  # noqa: F401 (fixture)

NAME_PROMPT = "请给出 5 到 8 个汉字的产品名称，共 4 项。方向{}"
KEYWORD_PROMPT = "请用英文写 8 到 12 个关键词，共 3 项。方向{}"
ITEMS_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["item_1", "item_2", "item_3"],
                "properties": {f"item_{i}": {"type": "string"} for i in (1, 2, 3)}}

# What a decoration leaves on an item the server failed to read off.
DECORATED = re.compile(r"方案|创意\d|Prompt \d|\*\*|```|^\s*(?:\d+[.、)]|（\d+）|[-•#\[\"“])|"
                       r"^[^，,：:]{1,10}[：:]|好的|以下是|希望|仅供参考|（")


def realistic_answers(sim: ChatSimulator, calls: int, schema: dict | None = None) -> list[tuple[str, str, str]]:
    """Return (deviation, content, finish_reason) of `calls` answers, on prompts alternating names and keywords."""
    answers = []
    for i in range(calls):
        prompt = (NAME_PROMPT if i % 2 else KEYWORD_PROMPT).format(i)
        body = ask(prompt) | ({"response_format": schema_format(schema, "items")} if schema else {})
        status, _, reply = azure(sim, body)
        assert status == 200, reply
        choice = reply["choices"][0]
        answers.append((sim.requests[-1].deviation, choice["message"]["content"], choice["finish_reason"]))
    return answers


def shows(kind: str, content: str, finish_reason: str) -> bool:
    """Tell whether an answer visibly carries deviation `kind`."""
    lines = content.splitlines()
    items = list(json.loads(content).values()) if content.startswith("{") and finish_reason == "stop" else []
    return {
        "preamble": lambda: content.startswith("好的，"),
        "numbered": lambda: bool(re.match(r"(1\. |1、|（1）)", content)) or (items and items[0].startswith("1. ")),
        "bold_label": lambda: lines[0].startswith(("**创意1**：", "**Prompt 1:**")),
        "header": lambda: lines[0] in ("### 创意1", "### Prompt 1"),
        "lines": lambda: len(lines) > 1 and "#" not in content,
        "closing": lambda: lines[-1].startswith(("希望", "以上")),
        "fence": lambda: content.startswith("```") and "#" in content,
        "json": lambda: content.lstrip("`json\n").startswith("["),
        "label": lambda: any(re.match(r"方案\d：", item) for item in items),
        "explanation": lambda: any(item.endswith("）") for item in items),
        "bold": lambda: any(item.startswith("**") for item in items),
        "too_long": lambda: max(map(len, items)) > 2 * min(map(len, items)),
        "duplicates": lambda: len(set(items or content.split("#"))) < len(items or content.split("#")),
        "too_few": lambda: "" in items or len(content.split("#")) < (3 if re.search("[a-z]", content) else 4),
        "chinese": lambda: any(re.search(r"[\u4e00-\u9fff]", item) for item in items or content.split("#")),
        "cut": lambda: finish_reason == "length",
        "clean": lambda: finish_reason == "stop" and not content.startswith(("好的", "```", "[", "**", "#")),
    }[kind]()


@pytest.mark.parametrize("schema, kinds", [(None, TEXT_DECORATIONS), (ITEMS_SCHEMA, JSON_DECORATIONS)],
                         ids=["text", "structured"])
def test_a_seed_gives_every_deviation_kind_at_realistic_rates(chat_sim, schema, kinds):
    chat_sim.realistic = Realistic(seed=5)
    answers = realistic_answers(chat_sim, 300, schema)
    assert {kind for kind, _, _ in answers} == {"clean", *kinds, *FAILURES}
    for kind, content, finish_reason in answers:
        assert shows(kind, content, finish_reason), (kind, content)
    shares = Counter(kind in kinds for kind, _, _ in answers)
    assert 0.25 < shares[True] / len(answers) < 0.45  # Realistic.decorated, 0.35
    with ChatSimulator(api_key=SIM_KEY, realistic=Realistic(seed=5)) as again:
        assert realistic_answers(again, 300, schema) == answers  # the seed fixes every answer


def test_realistic_mode_is_off_by_default(chat_sim):
    assert chat_sim.realistic is None
    assert {kind for kind, _, _ in realistic_answers(chat_sim, 20)} == {None}


GENERATIONS = [(0, {"task": TASK, "num": 3}), (1, deep_prompts()), (2, naming_prompts(schemes=4, select=2)),
               (3, group_two_prompts(schemes=2, num=2))]


@pytest.mark.parametrize("structured", ["auto", "off"])
def test_pipelines_on_realistic_answers_give_clean_items_or_fail_naming_the_step(paint, make_gpt, backends,
                                                                                 structured):
    backends.chat.realistic = Realistic(seed=23)
    gpt, outcomes = make_gpt(GPT_STRUCTURED=structured), Counter()
    for _ in range(6):  # the same requests again: the simulator answers each repeat anew
        for type_, prompts in GENERATIONS:
            trace = Trace()
            try:
                paint.run(type_, paint.read(type_, prompts), gpt, backends.pool, trace)
                outcomes["items"] += 1
            except BackendError as error:  # a clean failure: code 2, naming a GPT step
                assert not error.caused_by_input and error.describe().startswith(f"{error.step}: ")
                assert error.step in {entry.step for entry in trace.entries if entry.kind == "llm"}
                outcomes["failed"] += 1
            for entry in trace.entries:
                if entry.kind == "llm" and not entry.failed and not entry.error:  # the items the step took
                    assert entry.items and not [item for item in entry.items if DECORATED.search(item)], entry.raw
    deviations = Counter(record.deviation for record in backends.chat.requests)
    assert len(deviations) > 6 and deviations["clean"] < sum(deviations.values())
    assert outcomes["items"] >= 18 and outcomes["failed"] <= 6, (outcomes, deviations)
