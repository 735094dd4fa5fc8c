"""Turn an LLM answer into a list of items; the answer is untrusted text.

The prompts ask for items joined by `#` without numbering, but models decorate: they
number items, add bullets or quotes, leave blank items, use the full-width `＃`, end
with a separator, or put one item per line. `split_items` undoes all of that.

Formats come first. A code fence's content is the answer (the talk around the fence is
not). A JSON array of strings gives its strings as the items, unsplit, so a `#` inside one
stays; an array of arrays gives one list per scheme.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence

SEPARATOR = re.compile(r"[#＃]")
# A leading list marker: "1." "1、" "1)" "1:" "(1)" "（1）" "第1项：" "①" "-" "*" "•" "·".
# A number followed by a digit is content: "1.5倍" and "14:00的" keep theirs.
MARKER = re.compile(
    r"^(?:"
    r"\d{1,2}\s*(?:[.．](?!\d)|[、)）]|[:：](?!\d))"
    r"|[(（\[【]\s*\d{1,2}\s*[)）\]】]"
    r"|第\s*\d{1,2}\s*[项个条]\s*[:：、.]?"
    r"|[\u2460-\u2473\u2776-\u277f]"
    r"|(?:[-•·●▪◦]+|\*(?!\*))(?=\s|[^\W\d_]|$)"  # `*` a bullet, `**` bold
    r")\s*"
)
# Opening and closing characters that may wrap a whole item.
PAIRS = {"“": "”", "‘": "’", '"': '"', "'": "'", "「": "」", "『": "』", "《": "》",
         "【": "】", "[": "]", "(": ")", "（": "）", "**": "**", "`": "`"}
QUOTES = [(opening, closing) for opening, closing in PAIRS.items() if opening in "“‘\"'「『"]
TRAILING = "。；;，,、 \t"


def _unwrap(item: str) -> str:
    """Strip quotes or brackets wrapping the whole item (repeatedly), and stray unmatched quotes."""
    changed = True
    while changed and item:
        changed = False
        for opening, closing in PAIRS.items():
            # A pair wraps the item only if it first closes at the very end: not `(a:1.2), b, (c:1.4)`.
            end = len(item) - len(closing)
            if end > 0 and item.startswith(opening) and item.find(closing, len(opening)) == end:
                item = item[len(opening):len(item) - len(closing)].strip()
                changed = True
    for opening, closing in QUOTES:  # a quote whose partner is missing (`“智能水杯`)
        if item.startswith(opening) and closing not in item[len(opening):]:
            item = item[len(opening):].strip()
        if item.endswith(closing) and opening not in item[:-len(closing)]:
            item = item[:-len(closing)].strip()
    return item


def clean_item(item: str) -> str:
    """Return one item without list markers, wrapping quotes, or trailing punctuation."""
    item = " ".join(item.split())  # newlines and runs of spaces inside an item
    item = _unwrap(item)
    item = MARKER.sub("", item, count=1)
    item = _unwrap(item).rstrip(TRAILING)
    return _unwrap(item)


# -- 1. formats ------------------------------------------------------------------------
FENCE = re.compile(r"^\s*```\s*[\w+-]*\s*$")  # a fence line, with the block's language


def _unfenced(text: str) -> str:
    """Return the content of the answer's fenced blocks, or the answer when it has none."""
    lines = text.splitlines()
    if not any(FENCE.match(line) for line in lines):
        return text
    inside, kept = False, []
    for line in lines:
        if FENCE.match(line):
            inside = not inside
        elif inside:  # an unclosed fence runs to the end
            kept.append(line)
    return "\n".join(kept)


def _json_lists(text: str) -> list[list[str]] | None:
    """Return the strings of a JSON array on lines of its own (one list per inner array), else None."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end < start:
        return None
    before, after = text[:start].rstrip(" \t"), text[end + 1:].lstrip(" \t")
    if (before and not before.endswith("\n")) or (after and not after.startswith("\n")):
        return None  # a bracket inside a line of text (`[3] 发光跳绳`), not an array
    try:
        data = json.loads(text[start:end + 1])
    except ValueError:
        return None
    if not isinstance(data, list) or not data:
        return None
    if all(isinstance(item, str) for item in data):
        return [data]
    if all(isinstance(group, list) and all(isinstance(item, str) for item in group) for group in data):
        return data
    return None


def split_items(text: str) -> list[str]:
    """Return the non-blank items of `text`: split on `#`/`＃`, or on lines when it has neither."""
    text = _unfenced(text or "")
    lists = _json_lists(text)
    if lists is not None:
        return [item for item in (clean_item(raw) for group in lists for raw in group) if item]
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
