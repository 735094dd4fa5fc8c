"""Every prompt template the pipelines render: its variables, with sample values for the startup check.

A template may use exactly the variables named here. `counted` templates ask for a list
and must state its length as `共 {count} 项` (the parser and the chat simulator both rely
on it). settings/README.md documents the same table for the people who edit prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TemplateSpec:
    """The sample variables of one template, and whether it asks for `count` items."""

    sample: dict[str, Any]
    counted: bool = True


TASK = "设计一款运动辅助产品"
PRODUCTS = ["可折叠训练凳", "智能跳绳", "发光护膝"]
SCENES = ["清晨公园里折叠后放在长椅旁", "客厅里记录跳绳次数", "夜跑时照亮前方路面"]
TEXTS = ["可折叠", "带计数"]
PAIRS = [{"product": p, "scene": s} for p, s in zip(PRODUCTS, SCENES, strict=True)]
SCHEMES = [{"texts": TEXTS}, {"texts": []}]
NAMED = [{"name": "折叠计数训练凳", "texts": TEXTS}, {"name": "夜行发光护膝", "texts": []}]
FEATURES = ["铝合金框架、三段折叠、底部防滑垫", "握柄内置计数芯片、可调绳长、屏幕显示卡路里",
            "柔性灯带、USB充电、透气网布"]

SPECS: dict[str, TemplateSpec] = {
    # Type 0: rapid divergence.
    "rapid/products": TemplateSpec({"task": TASK, "count": 3}),
    "rapid/scenes": TemplateSpec({"task": TASK, "products": PRODUCTS, "count": 3}),
    "rapid/sd_prompts": TemplateSpec({"items": PAIRS, "count": 3}),
    "rapid/abstracts": TemplateSpec({"task": TASK, "products": PRODUCTS, "count": 3}),
    # Type 1: deep divergence (identify is a vision call on the sketch).
    "deep/identify": TemplateSpec({"task": TASK, "texts": TEXTS, "count": 1}),
    "deep/products": TemplateSpec({"task": TASK, "sketch": "折叠训练凳", "texts": TEXTS, "count": 3}),
    "deep/scenes": TemplateSpec({"task": TASK, "products": PRODUCTS, "count": 3}),
    "deep/sd_prompts": TemplateSpec({"items": PAIRS, "count": 3}),
    "deep/abstracts": TemplateSpec({"task": TASK, "products": PRODUCTS, "count": 3}),
    "deep/concretes": TemplateSpec({"task": TASK, "products": PRODUCTS, "count": 3}),
    # Type 2: naming (a vision call over every sketch) and selection.
    "naming/names": TemplateSpec({"task": TASK, "schemes": SCHEMES, "count": 2}),
    "naming/select": TemplateSpec({"task": TASK, "schemes": NAMED,
                                   "names": [s["name"] for s in NAMED], "count": 1}),
    # Type 3: convergence group two; `per_scheme` items for each scheme, `count` in all.
    "group_two/scenes": TemplateSpec({"schemes": SCHEMES, "per_scheme": 2, "count": 4}),
    "group_two/scene_prompts": TemplateSpec({"scenes": SCENES, "count": 3}),
    "group_two/concretes": TemplateSpec({"schemes": SCHEMES, "per_scheme": 2, "count": 4}),
    "group_two/product_prompts": TemplateSpec({"features": FEATURES, "count": 3}),
    # Stable Diffusion prompts around the keywords GPT wrote.
    "sd/scene_positive": TemplateSpec({"keywords": "folding bench, city park, morning light"},
                                      counted=False),
    "sd/product_positive": TemplateSpec({"keywords": "folding bench, aluminium frame"}, counted=False),
    "sd/scene_negative": TemplateSpec({}, counted=False),
    "sd/product_negative": TemplateSpec({}, counted=False),
}
