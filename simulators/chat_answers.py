"""Deterministic fake answers of the chat-completions simulator (a test double, no model).

The conventions that prompts follow to steer these answers are documented in
`simulators.openai_chat`; this module only implements them. Every answer depends on
the prompt text alone, so the same prompt always gets the same answer.
"""
from __future__ import annotations

import hashlib
import re

COUNT_RE = re.compile(r"共\s*(\d+)\s*项")
CANDIDATES_RE = re.compile(r"^[ \t]*候选[:：][ \t]*(.*)$", re.MULTILINE)
SEPARATORS_RE = re.compile(r"[#＃]")

# Small built-in vocabularies: enough combinations that a few dozen items never repeat.
_ZH_QUALITIES = ["可折叠", "轻便", "智能", "防水", "便携", "模块化", "自清洁", "低噪",
                 "节能", "可调节", "柔性", "发光", "抗菌", "磁吸", "无线", "耐磨"]
_ZH_THINGS = ["水杯", "护膝", "背包", "跳绳", "头盔", "手环", "座椅", "台灯",
              "雨伞", "跑鞋", "计时器", "收纳盒", "拉力带", "瑜伽垫", "水壶", "护腕"]
_EN_WORDS = ["folding frame", "city park", "morning light", "minimal", "soft shadows",
             "matte plastic", "wooden table", "sports field", "close-up", "clean lines",
             "aluminium body", "blue hour", "studio light", "kitchen counter", "river bank",
             "wide angle", "pastel colours", "rubber grip", "glass surface", "mountain trail"]
_CIRCLED = "①②③④⑤⑥⑦⑧⑨⑩"


def _digest(text: str, salt: str = "") -> int:
    """Return a stable integer hash of `text` and `salt`."""
    return int.from_bytes(hashlib.sha256(f"{salt}\x00{text}".encode()).digest()[:8], "big")


def requested_count(prompt: str) -> int:
    """Return how many items the prompt asks for: the last `共 N 项`, else 1."""
    found = COUNT_RE.findall(prompt)
    return int(found[-1]) if found else 1


def candidates(prompt: str) -> list[str] | None:
    """Return the distinct candidates of the prompt's `候选：A#B` line, or None without one."""
    lines = CANDIDATES_RE.findall(prompt)
    if not lines:
        return None
    items = [part.strip() for part in SEPARATORS_RE.split(lines[-1])]
    return list(dict.fromkeys(item for item in items if item))


def wants_english(prompt: str) -> bool:
    """Tell whether the prompt asks for English keywords."""
    return "英文" in prompt or "english" in prompt.lower()


def _pick(prompt: str, pool: list[str], count: int) -> list[str]:
    """Pick `count` distinct items of `pool` in an order fixed by the prompt's hash."""
    return sorted(pool, key=lambda item: _digest(prompt, item))[:count]


def _fake_item(prompt: str, index: int, attempt: int, english: bool) -> str:
    """Return one fake item for position `index` (another one for each `attempt`)."""
    seed = _digest(prompt, f"{index}/{attempt}")
    if english:
        words = _pick(str(seed), _EN_WORDS, 4)
        return ", ".join(words)
    return _ZH_QUALITIES[seed % len(_ZH_QUALITIES)] + _ZH_THINGS[(seed // 97) % len(_ZH_THINGS)]


def answer_items(prompt: str, count: int | None = None) -> list[str]:
    """Return the items answering `prompt`: `count` of them (default: as many as asked)."""
    count = requested_count(prompt) if count is None else count
    pool = candidates(prompt)
    if pool is not None:
        return _pick(prompt, pool, min(count, len(pool)))
    english, items = wants_english(prompt), []
    for index in range(count):
        for attempt in range(20):
            item = _fake_item(prompt, index, attempt, english)
            if item not in items:
                break
        else:  # vocabulary exhausted: make it unique by its position
            item = f"{item} {index + 1}"
        items.append(item)
    return items


def messy(items: list[str]) -> str:
    """Join `items` the way a chatty model would: numbering, bullets, quotes, blanks, mixed `#`."""
    styles = [
        lambda i, s: f"{i + 1}. {s}",
        lambda i, s: f"{_CIRCLED[i % len(_CIRCLED)]}{s}",
        lambda i, s: f"- {s}",
        lambda i, s: f"“{s}”",
        lambda i, s: f' "{s}" ',
        lambda i, s: f"• {s}",
    ]
    parts = [styles[i % len(styles)](i, item) for i, item in enumerate(items)]
    if parts:
        parts.insert(1, "  ")  # a blank item between the first two
    text = ""
    for i, part in enumerate(parts):
        text += part + ("＃" if i % 2 else "#")
    return text  # ends with a separator on purpose


def answer_text(prompt: str, *, short: bool = False, messy_style: bool = False) -> str:
    """Return the `#`-joined answer to `prompt`, one item short or decorated when asked."""
    count = requested_count(prompt)
    items = answer_items(prompt, max(count - 1, 0) if short else count)
    return messy(items) if messy_style else "#".join(items)
