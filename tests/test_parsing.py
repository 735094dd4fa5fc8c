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
    # -- rule 1: fences and JSON arrays carry items
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
    # -- rule 2: preambles and closing remarks are not items
    # a preamble on a line of its own, with or without a colon
    ("好的，以下是3个产品创意：\n\n折叠水杯#智能护膝#发光跳绳", ["折叠水杯", "智能护膝", "发光跳绳"]),
    ("当然可以！\n折叠水杯\n智能护膝", ["折叠水杯", "智能护膝"]),
    # ... or glued to the first item
    ("好的，以下是3个产品创意：折叠水杯#智能护膝#发光跳绳", ["折叠水杯", "智能护膝", "发光跳绳"]),
    ("Sure, here are the prompts: folding bench, park#smart rope, room", ["folding bench, park", "smart rope, room"]),
    # a closing remark after a blank line, on the next line, or glued to the last item
    ("折叠水杯#智能护膝\n\n希望这些创意能给你带来灵感！", ["折叠水杯", "智能护膝"]),
    ("折叠水杯#智能护膝\n这些产品都在折叠结构上相通。", ["折叠水杯", "智能护膝"]),
    ("1. 折叠水杯\n2. 智能护膝\n\n这些创意分别从两个角度出发。", ["折叠水杯", "智能护膝"]),
    ("折叠水杯#智能护膝。希望对你有帮助！", ["折叠水杯", "智能护膝"]),
    # reasons and asides after the items, bold or in parentheses, run to the end
    ("折叠水杯#智能护膝\n\n理由：折叠水杯省空间；\n智能护膝更安全。", ["折叠水杯", "智能护膝"]),
    ("折叠水杯\n**选择理由**：省空间", ["折叠水杯"]),
    ("可折叠计数训练凳\n（依据：草图中的铰链结构）", ["可折叠计数训练凳"]),
    # the prompt's count echoed, on a line of its own or after the last item
    ("折叠水杯\n智能护膝\n共 2 项", ["折叠水杯", "智能护膝"]),
    ("折叠水杯#智能护膝（共2项）", ["折叠水杯", "智能护膝"]),
    # -- rule 2: what only looks like talk stays
    # a remark opens only after an item: the first line is an item whatever its first word
    ("希望工程助学书包\n可折叠书桌", ["希望工程助学书包", "可折叠书桌"]),
    # words that open remarks, but speak of something else than the items
    ("周末清晨的花园里，训练凳展开\n这些天连续加班的程序员起身", ["周末清晨的花园里，训练凳展开", "这些天连续加班的程序员起身"]),
    ("折叠水杯\n以上下铺改造的儿童床", ["折叠水杯", "以上下铺改造的儿童床"]),
    # an English preamble word at the start of a prompt, before an attention weight's colon
    ("sure-grip handle, (wooden table:1.2)#folding bench, park",
     ["sure-grip handle, (wooden table:1.2)", "folding bench, park"]),
    # -- rule 3: headings are not items
    # a markdown title: its # are no separators
    ("### 运动辅助产品创意\n\n智能跳绳#折叠训练凳", ["智能跳绳", "折叠训练凳"]),
    ("#### 车把雨篷\n暴雨中的路口\n\n#### 骑行雨裙\n傍晚的阵雨里", ["暴雨中的路口", "傍晚的阵雨里"]),
    # a line ending in a colon introduces what follows
    ("以下是每个产品背后的工作原理：\n借助弹性储能\n把动作计数反馈", ["借助弹性储能", "把动作计数反馈"]),
    ("产品名称：\n车把雨篷", ["车把雨篷"]),
    # a bold line over the text it introduces, numbered or not
    ("1. **桌下踏步机**\n午后的办公室里\n\n2. **升降桌**\n评审会结束后", ["午后的办公室里", "评审会结束后"]),
    ("**1. 可折叠训练凳**\nfolding bench, park", ["folding bench, park"]),
    # bold lines one after another are the items themselves
    ("1. **折叠计数训练凳**\n2. **夜跑发光护膝**", ["折叠计数训练凳", "夜跑发光护膝"]),
    ("**可折叠计数训练凳**", ["可折叠计数训练凳"]),
    # `# A # B` holds separators: a list, not a header
    ("# 折叠水杯 # 智能护膝", ["折叠水杯", "智能护膝"]),
    # -- rule 4: separators and line breaks
    # a line break ends an item in a # list too
    ("折叠水杯#智能护膝\n发光跳绳#防水背包", ["折叠水杯", "智能护膝", "发光跳绳", "防水背包"]),
    # a separator opening or ending a line reaches the line next to it
    ("折叠水杯\n#智能护膝#\n发光跳绳", ["折叠水杯", "智能护膝", "发光跳绳"]),
    # a line that no separator reaches is talk, not an item
    ("这是我的想法\n折叠水杯#智能护膝", ["折叠水杯", "智能护膝"]),
    # a negative prompt stays with the prompt above it, so that its check can see it
    ("folding bench, park\nNegative prompt: people, text\n#\nsmart rope, room\nNegative prompt: text",
     ["folding bench, park Negative prompt: people, text", "smart rope, room Negative prompt: text"]),
    ("Positive: folding bench, park\nNegative: people\n\nPositive: smart rope, room\nNegative: text",
     ["folding bench, park Negative: people", "smart rope, room Negative: text"]),
    # -- rule 5: uneven schemes keep only as many items each as the shortest
    # three and one: neither scheme's items can be lined up with its cards
    ("方案1：\n训练凳在花园展开\n客厅里做仰卧起坐\n阳台上折起靠墙\n\n方案2：\n滨江步道夜跑",
     ["训练凳在花园展开", "滨江步道夜跑"]),
    ('[["训练凳在花园展开", "客厅里做仰卧起坐"], ["滨江步道夜跑"]]', ["训练凳在花园展开", "滨江步道夜跑"]),
    # headings that name no scheme group nothing, however uneven
    ("### 家用\n折叠水杯#智能护膝\n### 户外\n发光跳绳", ["折叠水杯", "智能护膝", "发光跳绳"]),
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
    # one candidate inside another: the longer one named is meant, the exact one when it stands alone
    (["壁挂折叠小餐桌（不占地面空间）"], ["折叠小餐桌", "壁挂折叠小餐桌"], ["壁挂折叠小餐桌"]),
    (["折叠小餐桌", "壁挂折叠小餐桌"], ["壁挂折叠小餐桌", "折叠小餐桌"], ["折叠小餐桌", "壁挂折叠小餐桌"]),
    # the name before its reason decides, whatever the reason mentions
    (["夜跑发光护膝：比折叠计数训练凳更容易落地"], ["折叠计数训练凳", "夜跑发光护膝"], ["夜跑发光护膝"]),
    (["**夜跑发光护膝**：比折叠计数训练凳更容易落地"], ["折叠计数训练凳", "夜跑发光护膝"], ["夜跑发光护膝"]),
    # a name inside a sentence
    (["我推荐“心率感应跳绳”，因为它新颖"], ["心率感应跳绳", "夜跑发光护膝"], ["心率感应跳绳"]),
    # candidates are cleaned as answers are, and the candidate itself is returned
    (["折叠凳"], ["“折叠凳”。", "护膝"], ["“折叠凳”。"]),
])
def test_match_choices(items, choices, picked):
    assert match_choices(items, choices) == picked


# -- rule 5, schemes ---------------------------------------------------------------------------------
PER_SCHEME = ["训练凳在花园展开", "客厅里做仰卧起坐", "滨江步道夜跑", "校园跑道的弯道"]


@pytest.mark.parametrize("answer", [
    "方案1：\n训练凳在花园展开#客厅里做仰卧起坐\n\n方案2：\n滨江步道夜跑#校园跑道的弯道",
    "方案1：\n训练凳在花园展开\n客厅里做仰卧起坐\n\n方案2：\n滨江步道夜跑\n校园跑道的弯道",
    "**方案1**\n1. 训练凳在花园展开\n2. 客厅里做仰卧起坐\n\n**方案2**\n1. 滨江步道夜跑\n2. 校园跑道的弯道",
    "### 方案一\n- 训练凳在花园展开\n- 客厅里做仰卧起坐\n### 方案二\n- 滨江步道夜跑\n- 校园跑道的弯道",
    "方案1：训练凳在花园展开#方案1：客厅里做仰卧起坐#方案2：滨江步道夜跑#方案2：校园跑道的弯道",
    "方案1：训练凳在花园展开#客厅里做仰卧起坐#方案2：滨江步道夜跑#校园跑道的弯道",
    '[["训练凳在花园展开", "客厅里做仰卧起坐"], ["滨江步道夜跑", "校园跑道的弯道"]]',
])
def test_an_answer_per_scheme_gives_the_schemes_items_in_order(answer):
    assert split_items(answer) == PER_SCHEME


# -- rule 6, labels ----------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [
    "方案1：车把雨篷", "方案一：车把雨篷", "创意1：车把雨篷", "产品2：车把雨篷", "场景3：车把雨篷", "形态一：车把雨篷",
    "特征：车把雨篷", "原理：车把雨篷", "产品名称：车把雨篷", "产品名：车把雨篷", "名称：车把雨篷", "**产品名称**：车把雨篷",
    "**方案二**：车把雨篷", "**方案1：**车把雨篷", "1. 创意1：车把雨篷",
])
def test_labels_are_dropped(raw):
    assert clean_item(raw) == "车把雨篷"


@pytest.mark.parametrize("raw", ["Prompt 1: folding bench, park", "**Prompt 2:** folding bench, park",
                                 "Positive: folding bench, park", "prompt: folding bench, park"])
def test_prompt_labels_are_dropped(raw):
    assert clean_item(raw) == "folding bench, park"


@pytest.mark.parametrize("raw", [
    "材质：铝合金、结构：三段折叠、交互：LED计数",  # a colon inside the features, not a label
    "晚上九点的客厅，老人按下按键：药已服用",
    "桌下静音踏步机：把微小的重复动作嵌入工作时间",  # a product before a colon: only the step can tell
    "**桌下静音踏步机**：开会时也能悄悄活动双腿",
    "方案很简单：三段折叠",  # a label word that labels nothing
    "18:45的工位上，坐垫轻轻震动",
])
def test_what_only_looks_like_a_label_stays(raw):
    assert clean_item(raw) == raw


# -- the readings a step asks for --------------------------------------------------------------
@pytest.mark.parametrize("raw, name", [
    ("折叠凳——因为可以收纳", "折叠凳"),
    ("1. 折叠式健身踏板——同样靠折叠实现便携", "折叠式健身踏板"),
    ("名称：折叠凳（理由：省空间）", "折叠凳"),
    ("**桌下静音踏步机**：开会时也能悄悄活动双腿", "桌下静音踏步机"),
    ("折叠计数训练凳（可折叠收纳，自动计数）", "折叠计数训练凳"),
    ("“定时亮灯药盒”：按早中晚分格", "定时亮灯药盒"),
    ("Smart Bottle - reminds you to drink", "Smart Bottle"),
    ("**产品名称**：车把雨篷", "车把雨篷"),  # a label, not a name
])
def test_a_name_read_as_a_name_loses_its_explanation(raw, name):
    assert clean_item(raw, names=True) == name


@pytest.mark.parametrize("raw", [
    "儿童（3-6岁）平衡车",  # an aside inside the name
    "8:15定时闹钟",  # a clock time
    "T-shirt折叠架",
    "从草图上的铰链来看，这应该是一款训练凳",  # prose stays whole, for the step's checks
])
def test_what_belongs_to_a_name_stays(raw):
    assert clean_item(raw, names=True) == raw


def test_names_are_read_in_every_item_of_the_answer():
    answer = "1. 折叠式健身踏板——同样靠折叠实现便携\n2. 计数俯卧撑板——把计数融入训练器械"
    assert split_items(answer, names=True) == ["折叠式健身踏板", "计数俯卧撑板"]
    # a bold name over its explanation: the name, where another step takes the bold line as a heading
    answer = "1. **折叠式健身踏板**\n同样靠折叠实现便携\n\n2. **计数俯卧撑板**\n把计数融入训练器械"
    assert split_items(answer, names=True) == ["折叠式健身踏板", "计数俯卧撑板"]
    assert split_items(answer) == ["同样靠折叠实现便携", "把计数融入训练器械"]
    assert split_items("折叠计数训练凳（可折叠收纳）#夜跑发光护膝（夜间示警）", names=True) == ["折叠计数训练凳", "夜跑发光护膝"]


PRODUCTS = ["桌下静音踏步机", "站坐交替升降桌"]


@pytest.mark.parametrize("answer", [
    "桌下静音踏步机：午后的办公室里轻踩踏板#站坐交替升降桌：评审会后站着改方案",
    "1. **桌下静音踏步机**：午后的办公室里轻踩踏板\n2. **站坐交替升降桌**：评审会后站着改方案",
    "**桌下静音踏步机：**午后的办公室里轻踩踏板#**站坐交替升降桌：**评审会后站着改方案",
    "桌下静音踏步机\n午后的办公室里轻踩踏板\n\n站坐交替升降桌\n评审会后站着改方案",  # alone on a line
])
def test_a_listed_product_before_the_text_is_a_label(answer):
    assert split_items(answer, labels=PRODUCTS) == ["午后的办公室里轻踩踏板", "评审会后站着改方案"]


@pytest.mark.parametrize("raw", [
    "清晨的公园：跑者展开训练凳",  # not a listed product
    "桌下静音踏步机让人在开会时轻踩踏板",  # the product inside the text: the product_named check's
    "桌下静音踏步机：",  # nothing after it
])
def test_only_a_listed_product_before_a_colon_is_a_label(raw):
    assert clean_item(raw, labels=PRODUCTS) == raw


def test_a_selection_with_a_reason_paragraph_picks_the_names_before_it():
    answer = "夜跑发光护膝#姿态纠正背心\n\n理由：相比折叠计数训练凳，这两个方案更容易落地。"
    candidates = ["折叠计数训练凳", "夜跑发光护膝", "心率感应跳绳", "姿态纠正背心"]
    assert match_choices(split_items(answer), candidates) == ["夜跑发光护膝", "姿态纠正背心"]
