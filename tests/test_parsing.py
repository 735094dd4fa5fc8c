"""Messy LLM answers turned into items."""
from __future__ import annotations

import pytest

from apps.paint.pipelines.parsing import clean_item, match_choices, split_items


@pytest.mark.parametrize("answer, items", [
    ("折叠水杯#智能护膝#发光跳绳", ["折叠水杯", "智能护膝", "发光跳绳"]),
    # numbering of every common kind
    ("1. 折叠水杯#2. 智能护膝#3. 发光跳绳", ["折叠水杯", "智能护膝", "发光跳绳"]),
    ("1、折叠水杯#2、智能护膝", ["折叠水杯", "智能护膝"]),
    ("(1) 折叠水杯#（2）智能护膝#[3] 发光跳绳", ["折叠水杯", "智能护膝", "发光跳绳"]),
    ("①折叠水杯#②智能护膝#⑩发光跳绳", ["折叠水杯", "智能护膝", "发光跳绳"]),
    ("1) 折叠水杯#2）智能护膝#3: 发光跳绳#4：防水背包", ["折叠水杯", "智能护膝", "发光跳绳", "防水背包"]),
    ("第1项：折叠水杯#第2项：智能护膝", ["折叠水杯", "智能护膝"]),
    # bullets
    ("- 折叠水杯#• 智能护膝#* 发光跳绳#·防水背包", ["折叠水杯", "智能护膝", "发光跳绳", "防水背包"]),
    # quotes and brackets around items, markdown bold
    ('“折叠水杯”#"智能护膝"#「发光跳绳」#《防水背包》#**磁吸头盔**',
     ["折叠水杯", "智能护膝", "发光跳绳", "防水背包", "磁吸头盔"]),
    ("【折叠水杯】#'智能护膝'", ["折叠水杯", "智能护膝"]),
    ('1. “折叠水杯”#2. "智能护膝"。', ["折叠水杯", "智能护膝"]),
    # blanks, whitespace, full-width separator, trailing separator
    ("  折叠水杯 # #智能护膝＃ 发光跳绳 #", ["折叠水杯", "智能护膝", "发光跳绳"]),
    ("折叠水杯##智能护膝####", ["折叠水杯", "智能护膝"]),
    ("\n折叠水杯\n#\n智能护膝\n", ["折叠水杯", "智能护膝"]),
    # newlines as separators when there is no #
    ("1. 折叠水杯\n2. 智能护膝\n\n3. 发光跳绳\n", ["折叠水杯", "智能护膝", "发光跳绳"]),
    ("- 折叠水杯\r\n- 智能护膝", ["折叠水杯", "智能护膝"]),
    # a single item, trailing punctuation
    ("智能折叠训练凳。", ["智能折叠训练凳"]),
    ("智能折叠训练凳；", ["智能折叠训练凳"]),
    # English keywords keep their commas, only the trailing one goes
    ("folding bench, city park, morning light#smart rope, living room,",
     ["folding bench, city park, morning light", "smart rope, living room"]),
    ("1. close-up, matte plastic\n2. 3D printed frame, studio light",
     ["close-up, matte plastic", "3D printed frame, studio light"]),
    # numbers that are content, not numbering: decimals and clock times
    ("1.5倍省力的杠杆结构#3D打印外壳", ["1.5倍省力的杠杆结构", "3D打印外壳"]),
    ("14:00的开放式办公室里#8:15的暴雨中#10：30的站会前", ["14:00的开放式办公室里", "8:15的暴雨中", "10：30的站会前"]),
    ("1. 14:00的开放式办公室里\n2. 18:45的工位上", ["14:00的开放式办公室里", "18:45的工位上"]),
    # an item spread over lines inside one # part is joined
    ("折叠\n水杯#智能护膝", ["折叠 水杯", "智能护膝"]),
    # nothing usable
    ("", []),
    ("   ", []),
    ("# ＃ #", []),
    ("1.#2.#3.", []),
    ('""#“”', []),
])
def test_split_items(answer, items):
    assert split_items(answer) == items


def test_more_items_than_asked_keeps_order_so_callers_can_take_the_first():
    assert split_items("a#b#c#d#e")[:3] == ["a", "b", "c"]


@pytest.mark.parametrize("raw, clean", [
    ("  “ 智能水杯 ”  ", "智能水杯"),
    ("(（智能水杯）)", "智能水杯"),
    ("“智能水杯", "智能水杯"),
    ("-智能水杯", "智能水杯"),
    ("12. 智能水杯", "智能水杯"),
    ("智能水杯，", "智能水杯"),
])
def test_clean_item(raw, clean):
    assert clean_item(raw) == clean


@pytest.mark.parametrize("raw", [
    "(masterpiece:1.2), foldable bench, (worst quality:1.4)",  # two pairs, not one around the item
    "“折叠凳”和“护膝”",
    "**折叠凳**与**护膝**",
])
def test_only_a_pair_that_closes_at_the_end_wraps_an_item(raw):
    assert clean_item(raw) == raw


def test_bold_is_not_a_bullet():
    assert clean_item("**分格计时药盒**：按时间分区存放") == "**分格计时药盒**：按时间分区存放"
    assert clean_item("* 分格计时药盒") == "分格计时药盒"


@pytest.mark.parametrize("items, choices, picked", [
    (["甲方案", "乙方案"], ["甲方案", "乙方案", "丙方案"], ["甲方案", "乙方案"]),
    (["乙方案", "乙方案", "甲方案"], ["甲方案", "乙方案"], ["乙方案", "甲方案"]),  # no repeats
    (["不存在的", "甲方案"], ["甲方案", "乙方案"], ["甲方案"]),  # unknown names are dropped
    (["方案一：甲方案（最实用）"], ["甲方案", "乙方案"], ["甲方案"]),  # one name inside the item
    (["甲方案和乙方案"], ["甲方案", "乙方案"], []),  # ambiguous: names two
    ([], ["甲方案"], []),
])
def test_match_choices(items, choices, picked):
    assert match_choices(items, choices) == picked


# -- formats -------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, items", [
    ("```\n折叠水杯#智能护膝\n```", ["折叠水杯", "智能护膝"]),
    # the talk around a fence is not part of the answer
    ("好的，结果如下\n```text\n折叠水杯\n智能护膝\n```\n希望有帮助", ["折叠水杯", "智能护膝"]),
    ('["折叠水杯", "智能护膝"]', ["折叠水杯", "智能护膝"]),
    ('```json\n[\n  "折叠水杯",\n  "智能护膝"\n]\n```', ["折叠水杯", "智能护膝"]),
    # a JSON string is one item: a # inside it is no separator, its clean-up still applies
    ('["C#入门课", "1. 折叠水杯。"]', ["C#入门课", "折叠水杯"]),
    # brackets inside a line of text are no array
    ("[1] 折叠水杯#[2] 智能护膝", ["折叠水杯", "智能护膝"]),
    ('[folding bench, park]\n[smart rope, room]', ["folding bench, park", "smart rope, room"]),
])
def test_fences_and_json_arrays_carry_items(answer, items):
    assert split_items(answer) == items
