"""The answer shapes (strict JSON schemas) and the checks every GPT step's items go through."""
from __future__ import annotations

import openai
import pytest

from apps.paint.pipelines import ASKS
from apps.paint.pipelines.answers import (
    CHATTER, CLIPPED, COUNT, FEATURES, IDEAS, IDENTIFIED, KEYWORDS, LABEL, MARKUP, NAMES, NOT_ENGLISH, PRODUCT_NAMED, REFUSAL,
    SCENES, SD_PROMPTS, SD_SYNTAX, SENTENCE, TOO_LONG, TOO_SHORT, Choices, Context, Items, Named, PerScheme,
    answer_items, correction,
)
from apps.paint.pipelines.settings import Limits
from simulators.chat import strict_problem


def to_strict_json_schema(model):
    """Return the strict schema the SDK sends for `model` (its public helper applies the same rules)."""
    return openai.pydantic_function_tool(model)["function"]["parameters"]


NAME_LIMITS = Limits(chars=(None, 12))
SCENE_LIMITS = Limits(chars=(20, 40))


def failed(check, items, limits=Limits(), names=()):
    """Return the failure of `check` on `items` (None when they pass)."""
    return check(list(items), Context(len(items), limits, tuple(names)))


@pytest.mark.parametrize("shape, variables, keys", [
    (Items("一个名称"), {}, ["item_1", "item_2", "item_3"]),
    (Choices("一个候选"), {"names": ["甲", "乙"]}, ["choice_1", "choice_2", "choice_3"]),
    (PerScheme("一个场景"), {"schemes": [{}, {}], "per_scheme": 2}, ["scheme_1", "scheme_2"]),
    (Named("产品名称"), {}, ["product"]),
])
def test_every_shape_is_a_strict_schema_with_exact_keys(shape, variables, keys):
    schema = to_strict_json_schema(shape.model("step_x", 3, variables))  # what the SDK sends
    assert strict_problem(schema) is None
    assert list(schema["properties"]) == keys and schema["required"] == keys
    assert schema["additionalProperties"] is False


def test_the_selection_is_an_enum_of_the_candidates_and_group_two_one_object_per_scheme():
    choices = Choices("一个候选").model("naming_select", 2, {"names": ["折叠计数凳", "夜行护膝"]})
    assert to_strict_json_schema(choices)["properties"]["choice_1"]["enum"] == ["折叠计数凳", "夜行护膝"]
    shape = PerScheme("一个场景")
    model = shape.model("group_two_scenes", 4, {"schemes": [{}, {}], "per_scheme": 2})
    answer = model.model_validate({"scheme_1": {"item_1": "A1", "item_2": "A2"},
                                   "scheme_2": {"item_1": "B1", "item_2": "“B2”"}})
    assert answer_items(shape, answer) == ["A1", "A2", "B1", "B2"]  # cleaned like text items


def test_cant_tell_is_null_and_reads_as_no_item():
    shape = Named("产品名称")
    assert answer_items(shape, shape.model("deep_identify", 1, {}).model_validate({"product": None})) == [""]


def test_every_gpt_step_has_a_declaration():
    assert len(ASKS) == 16 and {step.split(".")[0] for step in ASKS} == {"rapid", "deep", "naming", "group_two"}


@pytest.mark.parametrize("check, items, limits, bad", [
    (TOO_LONG, ["折叠训练凳"], NAME_LIMITS, False),
    (TOO_LONG, ["可折叠计数训练凳带显示屏和蓝牙"], NAME_LIMITS, False),  # 15 characters: within the slack of 12
    (TOO_LONG, ["一款可以折叠收纳并且能够自动记录训练次数的多功能训练凳"], NAME_LIMITS, True),  # a 27-character "name"
    (TOO_SHORT, ["清晨的公园长椅旁，训练凳折叠后立在一边"], SCENE_LIMITS, False),
    (TOO_SHORT, ["公园里"], SCENE_LIMITS, True),
])
def test_length_is_what_the_template_asks_within_the_slack(check, items, limits, bad):
    assert (failed(check, items, limits) is not None) == bad


def test_a_length_failure_names_the_item_in_both_languages():
    failure = failed(TOO_LONG, ["折叠凳", "一款可以折叠收纳并且能够自动记录训练次数的多功能训练凳"], NAME_LIMITS)
    assert failure.detail == "item 2: 27 characters, asked for at most 12 characters"
    assert failure.correction == "第2项：有 27 个字，太长了：每项应为不超过 12 个字。"


@pytest.mark.parametrize("item, bad", [
    ("方案1：折叠计数训练凳", True), ("产品名称：折叠凳", True), ("**原理**：借助弹性形变", True),
    ("Prompt 1: folding bench", True), ("智能跳绳：在客厅里记录次数", True), ("形态一：铝合金框架、三段折叠", True),
    ("智能跳绳 客厅里孩子记录次数", True),  # a header line run into the scene
    ("14:00的开放式办公室里", False), ("清晨6:30，小区花园里跳绳", False), ("利用杠杆原理：以小力撬动大阻力", False),
])
def test_labels_are_told_from_colons_in_the_text(item, bad):
    assert (failed(LABEL, [item], names=["智能跳绳"]) is not None) == bad


@pytest.mark.parametrize("item, bad", [("折叠计数凳", False), ("可折叠、可计数的凳子", False), ("AR 健身镜", False),
                                       ("折叠凳，适合小空间", True), ("折叠凳。", False),
                                       ("运动辅助产品创意 智能计数跳绳", True)])  # a header run into the name
def test_a_name_is_no_sentence(item, bad):
    assert (failed(SENTENCE, [item.rstrip("。")]) is not None) == bad


def test_a_principle_may_not_name_a_product_of_the_request():
    failure = failed(PRODUCT_NAMED, ["借助弹性形变储存能量", "桌下静音踏步机把微小动作嵌入久坐"],
                     names=["智能跳绳", "桌下静音踏步机"])
    assert failure.check == "product_named" and "第2项" in failure.correction and "桌下静音踏步机" in failure.correction


def read(ask, items, count, limits=NAME_LIMITS):
    """Return the kept items and the failure kinds of `items` read by `ask`."""
    kept, failures = ask.read(list(items), Context(count, limits))
    return kept, [failure.check for failure in failures]


@pytest.mark.parametrize("ask, items, kept, kinds", [
    (NAMES, ["折叠凳", "夜行护膝", "折叠凳。"], ["折叠凳", "夜行护膝"], ["duplicates"]),  # punctuation aside
    (NAMES, ["折叠凳", "夜行护膝", "折叠凳", "计数跳绳"], ["折叠凳", "夜行护膝", "计数跳绳"], []),  # enough remain
    (NAMES, ["折叠凳", "", "计数跳绳"], ["折叠凳", "计数跳绳"], ["count"]),  # a blank structured value
    (NAMES, ["折叠凳", "夜行护膝", "计数跳绳", "发光背包"], ["折叠凳", "夜行护膝", "计数跳绳"], ["count"]),  # paired
    (IDEAS, ["折叠凳", "夜行护膝", "计数跳绳", "发光背包"], ["折叠凳", "夜行护膝", "计数跳绳"], []),  # ideas
])
def test_the_count_drops_repeats_and_fails_missing_or_unpaired_extra_items(ask, items, kept, kinds):
    assert read(ask, items, 3) == (kept, kinds)


def test_the_first_failure_by_precedence_names_it():
    long_sentence = "一款可以折叠收纳，并且能够自动记录训练次数的多功能训练凳"
    assert read(NAMES, ["好的，以下是创意", long_sentence], 3)[1] == ["count", "sentence", "too_long", "chatter"]
    assert read(SCENES, ["抱歉，我无法协助完成这个请求"], 1, SCENE_LIMITS)[1][0] == "refusal"
    assert COUNT.name == "count"


GOOD_SD = "folding bench, city park, morning light, minimal, wide angle, soft shadows, clean lines, photo"


@pytest.mark.parametrize("check, item", [
    (NOT_ENGLISH, "折叠凳, city park, morning light"), (NOT_ENGLISH, "folding bench，city park，morning light"),
    (SD_SYNTAX, GOOD_SD + ", Negative prompt: blurry"), (SD_SYNTAX, "(best quality:1.3), " + GOOD_SD),
    (SD_SYNTAX, GOOD_SD + " --ar 16:9"), (SD_SYNTAX, "Prompt 1: " + GOOD_SD), (SD_SYNTAX, "**Scene 1** " + GOOD_SD),
    (SD_SYNTAX, "<lora:bench:0.8>, " + GOOD_SD), (KEYWORDS, "folding bench, park"),
])
def test_sd_prompts_are_plain_english_keywords(check, item):
    limits = Limits(keywords=(8, 15))
    assert failed(check, [item], limits) is not None and failed(check, [GOOD_SD], limits) is None


def test_features_count_what_the_separators_part():
    limits = Limits(features=3)
    assert failed(FEATURES, ["铝合金框架、三段折叠、防滑底垫"], limits) is None
    assert failed(FEATURES, ["采用铝合金框架和硅胶防滑底座的设计"], limits).detail.endswith("at least 3")


@pytest.mark.parametrize("item, bad", [
    ("折叠训练凳", False), ("", True), ("抱歉，我无法从这张草图中准确判断它画的是什么产品", True),
    ("这是一个可以折叠的训练凳", True), ("I'm not sure what this sketch shows", True),
])
def test_identify_says_what_it_is_not_that_it_cannot_tell(item, bad):
    assert (failed(IDENTIFIED, [item]) is not None) == bad


@pytest.mark.parametrize("item, bad", [
    ("抱歉，我无法协助完成这个请求", True), ("I'm sorry, but I can't help with that.", True),
    ("抱歉，我无法从这张草图中准确判断它画的是什么产品", False),  # cannot tell: not a refusal
    ("老人无法完成深蹲时，扶手提供支撑", False),
])
def test_a_refusal_in_the_text_is_told_from_content(item, bad):
    assert (failed(REFUSAL, [item]) is not None) == bad


def test_the_corrective_prompt_is_the_original_and_what_was_wrong():
    failure = failed(TOO_LONG, ["一款可以折叠收纳并且能够自动记录训练次数的多功能训练凳"], NAME_LIMITS)
    prompt = correction("原来的提示，共 1 项", [failure])
    assert prompt.startswith("原来的提示，共 1 项\n\n") and failure.correction in prompt
    assert "共" not in prompt.removeprefix("原来的提示，共 1 项")  # the count stays the template's


@pytest.mark.parametrize("check, item", [
    (MARKUP, "```json"), (MARKUP, '折叠凳", "夜行护膝'), (MARKUP, '["折叠凳"'), (MARKUP, "<b>折叠凳</b>"),
    (CHATTER, "好的，以下是6个产品创意： 折叠凳"), (CHATTER, "发光护膝 希望这些创意对你有帮助！"),
    (CHATTER, "夜跑时照亮前方路面。如需调整请告诉我"), (CHATTER, "Here are the prompts: folding bench"),
    (CHATTER, "透气网孔内衬 以上形态可以根据成本进一步取舍"),
    (CHATTER, "清晨的操场上，学生绕着跑道慢跑。希望这个想法对你有帮助"),
    (CHATTER, "傍晚的公园里，老人扶着栏杆拉伸（这样更方便日常使用）"),
])
def test_formatting_and_chatter_glued_to_an_item_are_caught(check, item):
    assert failed(check, ["折叠训练凳", item]).detail.startswith("item 2: ")
    assert failed(check, ["折叠训练凳", "清晨的公园里，孩子希望多跳几下"]) is None
    assert failed(check, ["折叠训练凳", "利用弹性储能，对起身有帮助"]) is None
    assert failed(check, ["折叠训练凳", "在 14:00（午休后）的办公室里，职员站起来活动"]) is None


def test_a_clock_time_read_as_a_list_number_is_caught():
    raw = "14:00的开放式办公室里，员工在桌下轻踩踏板#午休时的工位上，坐垫提醒久坐的人起身"
    items = ["00的开放式办公室里，员工在桌下轻踩踏板", "午休时的工位上，坐垫提醒久坐的人起身"]
    failure = CLIPPED(items, Context(2, SCENE_LIMITS, raw=raw))
    assert failure.check == "clipped" and failure.detail == "item 1: lost '14:' from its start when read"
    assert CLIPPED(["1.5米伸缩晾衣杆"], Context(1, NAME_LIMITS, raw="1.5米伸缩晾衣杆")) is None


def test_more_items_than_asked_yield_to_what_the_items_hold():
    lines = [f"{part}: folding bench, city park, morning light, minimal, wide angle, soft shadows, clean lines, {n}"
             for n in ("photo", "film") for part in ("Positive", "Negative")]
    assert read(SD_PROMPTS, lines, 2, Limits(keywords=(8, 15)))[1][:2] == ["sd_syntax", "count"]


def test_a_selection_naming_one_candidate_twice_is_duplicates():
    kept, failures = NAMES.read(["夜跑发光护膝"], Context(2, NAME_LIMITS, offered=2))  # the filter merged a repeat
    assert [failure.check for failure in failures][0] == "duplicates"
