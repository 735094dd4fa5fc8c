"""Turn an LLM answer into a list of items; the answer is untrusted text.

The prompts ask for items joined by `#` without numbering, but models decorate: they
number items, add bullets or quotes, leave blank items, use the full-width `＃`, end
with a separator, or put one item per line. `split_items` undoes all of that.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

SEPARATOR = re.compile(r"[#＃]")
# A leading list marker: "1." "1、" "1)" "(1)" "（1）" "第1项：" "①" "-" "*" "•" "·".
# "1." must not be followed by a digit, so "1.5倍" keeps its number.
MARKER = re.compile(
    r"^(?:"
    r"\d{1,2}\s*(?:[.．](?!\d)|[、)）:：])"
    r"|[(（\[【]\s*\d{1,2}\s*[)）\]】]"
    r"|第\s*\d{1,2}\s*[项个条]\s*[:：、.]?"
    r"|[\u2460-\u2473\u2776-\u277f]"
    r"|[-*•·●▪◦]+(?=\s|[^\W\d_]|$)"
    r")\s*"
)
# Opening and closing characters that may wrap a whole item.
PAIRS = {"“": "”", "‘": "’", '"': '"', "'": "'", "「": "」", "『": "』", "《": "》",
         "【": "】", "[": "]", "(": ")", "（": "）", "**": "**", "`": "`"}
TRAILING = "。；;，,、 \t"


def _unwrap(item: str) -> str:
    """Strip wrapping quotes or brackets (repeatedly), and stray unmatched quotes."""
    changed = True
    while changed and item:
        changed = False
        for opening, closing in PAIRS.items():
            if len(item) >= len(opening) + len(closing) and item.startswith(opening) \
                    and item.endswith(closing):
                item = item[len(opening):len(item) - len(closing)].strip()
                changed = True
    return item.strip("“”‘’\"'「」『』").strip()


def clean_item(item: str) -> str:
    """Return one item without list markers, wrapping quotes, or trailing punctuation."""
    item = " ".join(item.split())  # newlines and runs of spaces inside an item
    item = _unwrap(item)
    item = MARKER.sub("", item, count=1)
    item = _unwrap(item).rstrip(TRAILING)
    return _unwrap(item)


def split_items(text: str) -> list[str]:
    """Return the non-blank items of `text`: split on `#`/`＃`, or on lines when it has neither."""
    if not text:
        return []
    parts = SEPARATOR.split(text) if SEPARATOR.search(text) else text.splitlines()
    items = (clean_item(part) for part in parts)
    return [item for item in items if item]


def match_choices(items: Sequence[str], choices: Sequence[str]) -> list[str]:
    """Map items to the choices they name (exactly, else the one choice they contain); no repeats."""
    picked: list[str] = []
    for item in items:
        if item in choices:
            choice = item
        else:
            inside = [c for c in dict.fromkeys(choices) if c and c in item]
            choice = inside[0] if len(inside) == 1 else None
        if choice is not None and choice not in picked:
            picked.append(choice)
    return picked
