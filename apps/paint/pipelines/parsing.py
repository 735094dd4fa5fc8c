"""Turn an LLM answer into a list of items; the answer is untrusted text.

The prompts ask for items joined by `#`, without numbering or explanations. Models deviate
in ways a careful reader sees through, and `split_items` reads the answer as that reader
would, by these rules in this order:

1. **Formats.** A code fence's content is the answer (the talk around the fence is not).
   A JSON array of strings gives its strings as the items, unsplit, so a `#` inside one
   stays; an array of arrays gives one list per scheme.
2. **Talk around the list.** A first line that is a preamble (`当然可以！`) and everything
   from a closing remark on (`希望这些创意…`, `理由：…`, `（以上原理…）`) are not items.
3. **Headings.** A markdown header (`### 方案1`), a line ending in a colon (`方案1：`,
   `好的，以下是6个产品创意：`), a bare label (`**方案2**`) and a bold line over the text it
   introduces (`1. **桌下静音踏步机**` with the scene on the next line) are not items. The
   `#` of a header is not a separator.
4. **Separators.** Items are split on `#` (`＃` too) and on line breaks, since a model that
   starts a new line starts a new item; with no `#`, that is one item per line. In a `#`
   list, a line that no separator reaches is talk (`A#B#C` then `这些产品都在…`). A
   `Negative prompt:` line belongs to the prompt above it, so the keyword checks see it.
5. **Schemes.** Headings and labels `方案N` group the items per scheme, in the answer's
   order. Schemes given different numbers of items cannot be lined up with their cards:
   each keeps only as many as the shortest, so the step finds the answer short.
6. **Each item** (`clean_item`): list markers, wrapping quotes and brackets, bold and
   trailing punctuation go; so do labels (`方案1：`, `产品名称：`, `**特征**：`, `Prompt 1:`)
   and a preamble glued to the first item (`好的，以下是6个产品创意：A`) or a remark glued
   to the last (`…。希望对你有帮助`). Numbers that are content stay: `14:00的…`, `1.5米…`.

Two more readings depend on what the step asks for, and apply only when its caller asks:

- `names=True`, for the steps that ask for names: a name followed by an explanation is the
  name (`折叠凳——因为…`, `名称：X（理由…）`, `**X**：…`, a bold name over a line of text).
- `labels`, the names the prompt listed (its products): one of them before a colon, bold or
  not, or alone on a line, is a label, not part of the scene or principle after it
  (`桌下静音踏步机：把微小的…`).

Without them `X：…` stays whole, since whether X is the item or a label depends on the
step; the step's checks then see a name too long or a principle naming its product.
"""
from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from itertools import groupby

SEPARATOR = re.compile(r"[#＃]")


def split_items(text: str, *, names: bool = False, labels: Collection[str] = ()) -> list[str]:
    """Return the items of an answer, read by the rules of this module in their order.

    `names`: the step asks for names (products, identify, scheme names, the selection).
    `labels`: names the prompt listed that may stand as labels before an item (the
    products, for the steps that write a scene, principle or feature text per product).
    """
    text = _unfenced(text or "")
    lists = _json_lists(text)
    if lists is not None:
        return _even([[item for item in (clean_item(raw, names=names, labels=labels) for raw in group) if item]
                      for group in lists])
    read: list[tuple[int | None, str]] = []
    scheme: int | None = None  # named by a heading or a label, it holds until another is named
    for named, part in _raw_items(text, names=names, labels=labels):
        labelled, item = _read(part, names=names, labels=labels)
        scheme = labelled if labelled is not None else named if named is not None else scheme
        if item:
            read.append((scheme, item))
    return _even([[item for _, item in run] for _, run in groupby(read, key=lambda pair: pair[0])])


def _raw_items(text: str, *, names: bool, labels: Collection[str]) -> list[tuple[int | None, str]]:
    """Return the uncleaned items of a text answer (rules 2-4), with the scheme a section's headings name.

    The scheme comes with the first item of its section only; the items after it inherit it.
    """
    parts: list[tuple[int | None, str]] = []
    for named, lines in _sections(_without_talk(_lines(text)), names=names, labels=labels):
        section = [part for part in _section_items(lines) if part.strip()]
        parts += [(named if i == 0 else None, part) for i, part in enumerate(section)]
    if parts:
        parts[0] = (parts[0][0], PREAMBLE_HEAD.sub("", parts[0][1], count=1))
        parts[-1] = (parts[-1][0], GLUED_REMARK.sub("", parts[-1][1]))
    return parts


def clean_item(item: str, *, names: bool = False, labels: Collection[str] = ()) -> str:
    """Return one item without list markers, labels, wrapping quotes or trailing punctuation (rule 6)."""
    return _read(item, names=names, labels=labels)[1]


def match_choices(items: Sequence[str], choices: Sequence[str]) -> list[str]:
    """Map items to the choices they name, in the answer's order, without repeats.

    Items and choices are cleaned alike (`clean_item`) before they are compared. An item
    names a choice when its name (read as with `names=True`) is that choice; else when one
    choice is inside the name, or else inside the whole item, not counting a choice inside
    a longer one that is there too (`壁挂折叠小餐桌（不占地面空间）` names `壁挂折叠小餐桌`,
    not `折叠小餐桌`).
    """
    cleaned: dict[str, str] = {}
    for choice in choices:
        if key := clean_item(choice):
            cleaned.setdefault(key, choice)
    picked: list[str] = []
    for item in items:
        choice = _named_choice(clean_item(item, names=True), clean_item(item), cleaned)
        if choice is not None and choice not in picked:
            picked.append(choice)
    return picked


def _named_choice(name: str, whole: str, cleaned: dict[str, str]) -> str | None:
    """Return the choice an item names, by its name and its whole text (see `match_choices`), or None."""
    if name in cleaned:
        return cleaned[name]
    for text in (name, whole):
        inside = [choice for choice in cleaned if choice in text]
        longest = [choice for choice in inside if not any(choice != other and choice in other for other in inside)]
        if longest:
            return cleaned[longest[0]] if len(longest) == 1 else None
    return None


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


# -- 2. talk around the list --------------------------------------------------------------
# A preamble line opens with a courtesy or an announcement and ends like a sentence.
PREAMBLE = re.compile(r"^(?:好的|当然|没问题|以下是|下面是|这里是|sure\b|okay\b|ok\b|here (?:are|is)\b).*[：:。！!，,]$",
                      re.IGNORECASE)
# A preamble glued to the first item: a head before a colon that announces the list (the
# English words only where it starts: `sure-grip handle, (wooden table:1.2)` is a prompt).
PREAMBLE_HEAD = re.compile(r"^(?:[^：:(（]*(?:以下|如下|下面是|好的|当然|这里是)|(?:sure|okay|here (?:are|is))(?=[\s,，!！.]))"
                           r"[^：:(（]*[：:]\s*(?=\S)", re.IGNORECASE)
# A closing remark speaks about the items (possibly in parentheses), gives reasons, or
# echoes the prompt's count. `这些天…` and `以上下铺…` speak of something else.
ITEM_WORDS = r"创意|产品|方案|场景|原理|名称|提示词|特征|描述|形态|设计|想法|建议|内容"
REMARK_WORDS = (rf"(?:这些|以上)(?:{ITEM_WORDS}|都|均|是|就是|为|只是|仅供)"
                r"|希望(?:这些|以上|能|对|可以|你|您|给|有)|如需|如果(?:你|您)")
REASON_WORDS = r"注|备注|说明|(?:选择|推荐)?(?:理由|原因)|依据"
COUNT_ECHO = r"共\s*\d+\s*项"
REMARK = re.compile(rf"^(?:\*\*)?[（(]?\s*(?:{REMARK_WORDS}|(?:{REASON_WORDS})(?:\*\*)?\s*[:：]|{COUNT_ECHO}"
                    r"|hope\b|note\s*:)", re.IGNORECASE)
# A remark on the last item's line: after the end of a sentence or a space, or the count.
GLUED_REMARK = re.compile(rf"(?<=[。！!？?\s])\s*(?:{REMARK_WORDS}).*$|\s*[（(]?{COUNT_ECHO}[)）]?$")


def _without_talk(lines: list[str]) -> list[str]:
    """Return `lines` (stripped, blanks kept) without a preamble line and a closing remark."""
    content = [i for i, line in enumerate(lines) if line]
    if len(content) > 1 and PREAMBLE.match(lines[content[0]]):
        lines = lines[:content[0]] + [""] + lines[content[0] + 1:]
        content = content[1:]
    for i in content[1:]:  # a remark follows at least one item, and runs to the end
        if REMARK.match(lines[i]):
            return lines[:i]
    return lines


# -- 3. headings -------------------------------------------------------------------------
MD_HEADER = re.compile(r"^#{1,6}\s+(?P<text>[^#＃]+)$")  # `### 方案1`; `# A # B` is a list
BOLD_LINE = re.compile(r"^\*\*[^*]+\*\*[:：]?$")
ORDINAL = r"(?:\d{1,2}|[一二三四五六七八九]?十[一二三四五六七八九]?|[一二三四五六七八九])"
# The words a model puts before an item to say what it is (longer ones first).
LABEL_WORDS = (r"方案名称|方案|创意|想法|产品名称|产品名|产品|名称|名字|使用场景|场景描述|场景|形态|工作原理|原理"
               r"|功能特征|特征描述|特征|描述|提示词|positive prompt|positive|prompt")
# A label before an item: the word, maybe a number, maybe bold, and a colon.
LABEL = re.compile(rf"^(?:\*\*)?\s*(?P<word>{LABEL_WORDS})\s*(?P<n>{ORDINAL})?\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*",
                   re.IGNORECASE)
BARE_LABEL = re.compile(rf"^(?:{LABEL_WORDS})\s*{ORDINAL}?$", re.IGNORECASE)
SCHEME = re.compile(rf"^方案\s*(?P<n>{ORDINAL})")
CHINESE_DIGITS = {digit: value for value, digit in enumerate("一二三四五六七八九十", start=1)}


def _number(ordinal: str) -> int:
    """Return the value of an ordinal: `3`, `三`, `十二`."""
    if ordinal.isdigit():
        return int(ordinal)
    tens, ten, ones = ordinal.rpartition("十")
    if not ten:
        return CHINESE_DIGITS[ones]
    return CHINESE_DIGITS.get(tens, 1) * 10 + CHINESE_DIGITS.get(ones, 0)


def _heading_text(line: str, labels: Collection[str]) -> str | None:
    """Return the text of `line` if it is a header, ends in a colon, or is a bare or listed label; else None."""
    header = MD_HEADER.match(line)
    text = (header["text"] if header else _unwrap(_strip_marker(line))).strip("*").strip()
    if header or text.endswith((":", "：")) or BARE_LABEL.match(text) or text in labels:
        return text
    return None


def _is_bold_line(line: str) -> bool:
    return bool(BOLD_LINE.match(_strip_marker(line)))


def _bold_over_text(lines: list[str], i: int, labels: Collection[str]) -> bool:
    """Tell whether `lines[i]` is a bold line with ordinary text on the very next line (no blank between)."""
    after = lines[i + 1] if i + 1 < len(lines) else ""
    return (_is_bold_line(lines[i]) and bool(after) and _heading_text(after, labels) is None
            and not _is_bold_line(after))


def _sections(lines: list[str], *, names: bool, labels: Collection[str]) -> list[tuple[int | None, list[str]]]:
    """Return the runs of content lines between headings, each with the scheme its headings name.

    Read as names, a bold line over text is a name over its explanation: the name is content,
    the text under it (up to the next bold line or heading) goes.
    """
    sections: list[tuple[int | None, list[str]]] = []
    named: int | None = None
    current: list[str] = []
    explaining = False  # on the lines under a name
    for i, line in enumerate(lines):
        if not line:
            continue
        heading = _heading_text(line, labels)
        if explaining and heading is None and not _is_bold_line(line):
            continue
        explaining = False
        if heading is None and _bold_over_text(lines, i, labels):
            if names:
                current.append(line)
                explaining = True
                continue
            heading = _unwrap(_strip_marker(line))
        if heading is None:
            current.append(line)
            continue
        if current:
            sections.append((named, current))
            named, current = None, []
        if scheme := SCHEME.match(heading):
            named = _number(scheme["n"])
    if current:
        sections.append((named, current))
    return sections


# -- 4. separators -----------------------------------------------------------------------
NEGATIVE = re.compile(r"^(?:negative(?: prompt)?|反向提示词|负面提示词|负向提示词)\s*[:：]", re.IGNORECASE)


def _lines(text: str) -> list[str]:
    """Return the stripped lines of `text`, blanks kept, a `Negative prompt:` line joined to the one above."""
    lines: list[str] = []
    for line in (line.strip() for line in text.splitlines()):
        if NEGATIVE.match(line) and any(lines):
            while not lines[-1]:
                lines.pop()
            lines[-1] += " " + line
        else:
            lines.append(line)
    return lines


def _section_items(lines: list[str]) -> list[str]:
    """Return the raw items of one section: its `#` list, or its lines when it has no `#`.

    The list runs from the first line holding a separator to the last; the line before it
    belongs to it only when the list's first line opens with a separator, the line after
    it only when its last line ends with one. Other lines outside it are talk.
    """
    rows = [i for i, line in enumerate(lines) if SEPARATOR.search(line)]
    if not rows:
        return lines
    first, last = rows[0], rows[-1]
    if first > 0 and SEPARATOR.match(lines[first]):
        first -= 1
    if last + 1 < len(lines) and SEPARATOR.match(lines[last][-1]):
        last += 1
    return [part for line in lines[first:last + 1] for part in SEPARATOR.split(line)]


# -- 5. schemes -------------------------------------------------------------------------
def _even(groups: list[list[str]]) -> list[str]:
    """Return the groups' items in order, each group cut to the size of the smallest."""
    size = min((len(group) for group in groups), default=0)
    return [item for group in groups for item in group[:size]]


# -- 6. each item -----------------------------------------------------------------------
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
# Where the explanation after a name starts: a colon (not inside a clock time), a dash.
EXPLANATION = re.compile(r"(?<!\d)[:：]|[:：](?!\d)|—+|\s[-–]\s")
TRAILING_ASIDE = re.compile(r"\s*[（(][^（()）]*[)）]$")


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


def _strip_marker(item: str) -> str:
    return MARKER.sub("", item, count=1)


def _undecorated(item: str) -> str:
    """Return `item` without runs of white space, a list marker, wrapping quotes or trailing punctuation."""
    item = _unwrap(" ".join(item.split()))
    item = _unwrap(_strip_marker(item))
    return _unwrap(item.rstrip(TRAILING))


def _name_only(item: str) -> str:
    """Return the name at the start of `item`, without the explanation after it."""
    bold = re.match(r"^\*\*(?P<name>[^*]+)\*\*", item)
    if bold:
        return bold["name"]
    item = TRAILING_ASIDE.sub("", item) or item  # `X（理由：…）`, before its colon could cut it
    name = EXPLANATION.split(item, maxsplit=1)[0]  # `X：…`, `X——…`
    return TRAILING_ASIDE.sub("", name) or name  # `X（…）：…`


def _without_listed_label(item: str, labels: Collection[str]) -> str:
    """Return `item` without one of `labels` before a colon: `X：`, `**X**：` or `**X：**`."""
    for label in labels:
        if head := re.match(rf"(?:\*\*)?{re.escape(label)}\s*(?:\*\*\s*[:：]|[:：]\s*(?:\*\*)?)\s*(?=\S)", item):
            return item[head.end():]
    return item


def _read(item: str, *, names: bool, labels: Collection[str]) -> tuple[int | None, str]:
    """Return the scheme an item's label names (or None) and the item as `clean_item` gives it."""
    item = _undecorated(item)
    scheme = None
    if label := LABEL.match(item):
        if label["word"] == "方案" and label["n"]:
            scheme = _number(label["n"])
        item = _undecorated(item[label.end():])
    item = _name_only(item) if names else _without_listed_label(item, labels)
    return scheme, _undecorated(item)
