"""What a GPT step's answer must be: the shape it is asked in, and the checks its items must pass.

Each pipeline module declares its GPT steps in `ASKS`: step name -> `Ask(shape, checks)`. The
shape gives the pydantic model the step is asked with under structured outputs (a strict
JSON schema through the SDK) and reads the items back out of it; the text protocol reads
items with `parsing.split_items` instead. Either way the same checks then look at the same
list of items, so both protocols are held to the same standard:

- `Items`: an object with the required keys item_1..item_N (exact counts through the shape:
  strict mode does not enforce minItems/maxItems on arrays);
- `Choices`: choice_1..choice_N, each an enum of the candidate names;
- `PerScheme`: scheme_1..scheme_M, each an object of item_1..item_K (group two);
- `Named`: a product name, or null when the sketch cannot be told.

The lengths a check holds items to are the ones the template states (`settings.Limits`,
read from its text at startup), accepted within `SLACK`. A failed check names what was wrong
in English (the record, the log, the error) and in Chinese (`correction`, appended to the
prompt of the one corrective retry). Checks are named by the failure kinds of
tests/corpus/README.md (`count`, `duplicates`, `too_long`, `sentence`, ...), and when several
fail, `PRECEDENCE` says which one names the failure.
"""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from apps.paint.pipelines.parsing import clean_item
from apps.paint.pipelines.settings import Limits

SLACK = 0.5  # a length passes within half its bounds again: "不超过 12 个字" accepts 18, "20 到 40 字" 10 to 60


class _Strict(BaseModel):
    """The base of every answer model: no other keys (strict mode's additionalProperties false)."""

    model_config = ConfigDict(extra="forbid")


def _model(name: str, fields: Mapping[str, Any]) -> type[BaseModel]:
    return create_model(name, __base__=_Strict, **fields)


@functools.lru_cache(maxsize=256)
def _numbered(name: str, prefix: str, count: int, kind: Any, describe: str) -> type[BaseModel]:
    """Return a model of the required fields `{prefix}_1`..`{prefix}_{count}`, each of type `kind`."""
    return _model(name, {f"{prefix}_{i}": (kind, Field(description=f"{describe}（第{i}项）"))
                         for i in range(1, count + 1)})


# -- shapes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Items:
    """`count` texts, one per key."""

    describe: str  # what one item is, for the model (Chinese, like the prompt)

    def model(self, name: str, count: int, variables: Mapping[str, Any]) -> type[BaseModel]:
        """Return the answer model of one call."""
        return _numbered(name, "item", count, str, self.describe)

    def items(self, answer: BaseModel) -> list[str | None]:
        """Return the items of a parsed answer, in order."""
        return list(answer.model_dump().values())


@dataclass(frozen=True)
class Choices(Items):
    """`count` of the candidate names (the `names` variable), each an enum of them."""

    def model(self, name: str, count: int, variables: Mapping[str, Any]) -> type[BaseModel]:
        """Return the answer model of one call."""
        return _numbered(name, "choice", count, Literal[tuple(variables["names"])], self.describe)


@dataclass(frozen=True)
class PerScheme(Items):
    """`per_scheme` texts for each of the `schemes`, one object per scheme, in order."""

    def model(self, name: str, count: int, variables: Mapping[str, Any]) -> type[BaseModel]:
        """Return the answer model of one call."""
        schemes, per = len(variables["schemes"]), variables["per_scheme"]
        scheme = _numbered(f"{name}_scheme", "item", per, str, self.describe)
        return _numbered(name, "scheme", schemes, scheme, "一个方案的全部条目")

    def items(self, answer: BaseModel) -> list[str | None]:
        """Return the items of every scheme, scheme by scheme."""
        return [item for scheme in answer.model_dump().values() for item in scheme.values()]


@dataclass(frozen=True)
class Named(Items):
    """One name, or null for "can't tell" (so a model that cannot tell need not invent a sentence)."""

    def model(self, name: str, count: int, variables: Mapping[str, Any]) -> type[BaseModel]:
        """Return the answer model of one call."""
        return _model(name, {"product": (str | None, Field(description=self.describe))})


Shape = Items


def answer_items(shape: Shape, answer: BaseModel, *, names: bool = False) -> list[str]:
    """Return the items of a parsed answer, cleaned like text items (`names`: read as names); a null or blank one is ""."""
    return [clean_item(item, names=names) if isinstance(item, str) else "" for item in shape.items(answer)]


# -- checks ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    """What one check found wrong with an answer; `check` is its kind (as tests/corpus/README.md names them)."""

    check: str
    detail: str  # English: for the record, the log and the error
    correction: str  # Chinese: what the corrective retry tells the model
    rank: str | None = None  # the PRECEDENCE entry it sorts by, when not `check`


@dataclass(frozen=True)
class Context:
    """What a step knows when it checks an answer."""

    count: int
    limits: Limits
    names: tuple[str, ...] = ()  # the request's product names, which an item must not repeat
    more_ok: bool = False  # more items than asked are dropped (Ask.more_ok), not a failure
    raw: str = ""  # a text-protocol answer as it came, to see where an item was cut out of it
    offered: int | None = None  # items the answer offered before a step's filter merged repeats (the selection)


@dataclass(frozen=True)
class Check:
    """One check of a step's items: its kind, the limit it needs stated, and the test."""

    name: str
    test: Callable[[list[str], Context], Failure | None]
    needs: str | None = None  # the Limits field the template must state ("chars", "keywords", "features")

    def __call__(self, items: list[str], context: Context) -> Failure | None:
        return self.test(items, context)


# When several checks fail, the first of these names the failure: what the answer says of itself
# before what its text holds, missing items before single items; prose where a name was asked
# before its length; more items than asked after what the items hold (the extra ones are often
# parts of items split apart: an SD prompt's "Negative:" line). Other kinds follow, as run.
PRECEDENCE = ("refusal", "unidentifiable", "count", "duplicates", "sentence", "too_long", "product_named",
              "not_english", "sd_syntax", "too_many")


def _positions(indexes: Sequence[int]) -> str:
    return "、".join(str(i + 1) for i in indexes)


def _per_item(name: str, problem: Callable[[str, Context], str | None],
              detail: Callable[[str, Context], str], correction: Callable[[str, Context], str],
              needs: str | None = None) -> Check:
    """Return a check that fails the items for which `problem` names something (the first one shown)."""
    def test(items: list[str], context: Context) -> Failure | None:
        found = [(i, what) for i, item in enumerate(items) if item and (what := problem(item, context))]
        if not found:
            return None
        where = _positions([i for i, _ in found])
        first = found[0][1]
        return Failure(name, f"item {where.replace('、', ', ')}: {detail(first, context)}",
                       f"第{where}项：{correction(first, context)}")
    return Check(name, test, needs)


def _bounds(span: tuple[int | None, int | None]) -> tuple[int, int | None]:
    """Return the accepted (least, most) of an asked (fewest, most), widened by SLACK."""
    fewest, most = span
    least = math.ceil(fewest * (1 - SLACK)) if fewest else 1
    return least, math.floor(most * (1 + SLACK)) if most else None


def _asked(span: tuple[int | None, int | None], unit: str, chinese: bool = False) -> str:
    """Return how a span was asked for: "5 to 8 characters", or in Chinese "5 到 8 个字"."""
    fewest, most = span
    if chinese:
        return f"{fewest} 到 {most} {unit}" if fewest else f"不超过 {most} {unit}"
    return f"{fewest} to {most} {unit}" if fewest else f"at most {most} {unit}"


def _length(item: str) -> int:
    return len(re.sub(r"\s", "", item))


def _too(name: str, beyond: Callable[[int, tuple[int, int | None]], bool], zh: str) -> Check:
    """Return the check of items whose length is `beyond` the template's bounds (too long or too short)."""
    return _per_item(
        name, lambda item, c: f"{_length(item)}" if beyond(_length(item), _bounds(c.limits.chars)) else None,
        lambda n, c: f"{n} characters, asked for {_asked(c.limits.chars, 'characters')}",
        lambda n, c: f"有 {n} 个字，{zh}：每项应为{_asked(c.limits.chars, '个字', chinese=True)}。", needs="chars")


TOO_LONG = _too("too_long", lambda n, bounds: bounds[1] is not None and n > bounds[1], "太长了")
TOO_SHORT = _too("too_short", lambda n, bounds: n < bounds[0], "太短了")

# A leading label, then a colon that no digit follows (so "14:00的…" and "清晨6:30，…" are not
# labels): a markdown heading ("**原理**："), a numbered one ("方案1：", "Prompt 1:"), a label
# word ("产品名称：", "场景："), or one of the request's product names ("智能跳绳：…").
_LABEL_WORDS = ("产品名称|方案名称|创意名称|产品名|名称|方案|产品|创意|使用场景|场景|工作原理|原理|功能特征|特征|提示词|答案|回答"
                "|prompt|scene|product|name")
_LABEL = re.compile(rf"^\s*(?:\*\*[^*]{{1,20}}\*\*|[^\s，。！？；,.!?;:：]{{0,12}}?\s*(?:\d{{1,2}}|[一二三四五六七八九十]{{1,3}})"
                    rf"\s*[项个条号]?|{_LABEL_WORDS})\s*[:：](?!\d)", re.IGNORECASE)


def _label(item: str, context: Context) -> str | None:
    """Return the label an item starts with; a product name before a colon, a dash or a space is one too."""
    if m := _LABEL.match(item):
        return m[0].strip()
    return next((name for name in context.names if item.startswith(name) and len(item) > len(name)
                 and (item[len(name)] in ":：—-" or item[len(name)].isspace())), None)


LABEL = _per_item(
    "label", _label, lambda label, c: f"starts with the label {label!r}",
    lambda label, c: f"以“{label}”这样的标签开头：不要加编号、标签或前缀，只写内容本身。")

# Prose where a name was asked: sentence punctuation, a dash, or two lines run together (a
# space between Chinese characters: a header and the name, the name and its explanation).
_SENTENCE = re.compile(r"[，,。！？!?；;:：]|——|(?<=[\u4e00-\u9fff])\s+(?=[\u4e00-\u9fff])")
SENTENCE = _per_item(
    "sentence", lambda item, c: m[0] if (m := _SENTENCE.search(item)) else None,
    lambda mark, c: f"a sentence, not a name (it has {mark!r})",
    lambda mark, c: "像一句话而不是名称：只写名称本身，不要标点、解释、标签或理由。")

PRODUCT_NAMED = _per_item(
    "product_named", lambda item, c: next((n for n in c.names if len(n) >= 2 and n in item), None),
    lambda name, c: f"names the product {name!r}",
    lambda name, c: f"出现了产品名称“{name}”：请抛开具体产品来写，不要出现任何产品名称。")

_CJK = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]")


def _not_english(item: str, context: Context) -> str | None:
    if m := _CJK.search(item):
        return m[0]
    foreign = [ch for ch in item if not ch.isascii()]
    return foreign[0] if len(foreign) > len(item) // 10 else None


NOT_ENGLISH = _per_item(
    "not_english", _not_english, lambda ch, c: f"is not English keywords (it has {ch!r})",
    lambda ch, c: f"含有中文或其他非英文字符（“{ch}”）：提示词只能用英文关键词。")

# What Stable Diffusion WebUI would read as more than keywords: a negative prompt, weights,
# LoRA tags, Midjourney-style flags, a label or markdown. Weights are not stripped: they would
# change the emphasis the study's prompts give every participant alike.
_WEBUI = re.compile(r"\bnegative(?:\s*prompt|\s*[:：])|\([^()]*:\s*\d+(?:\.\d+)?\s*\)|<\s*lora:|(?:^|\s)--[a-z]"
                    r"|^\s*(?:(?:positive|negative)\s*)?(?:prompt)?\s*\d*\s*[:：]|\*\*|`", re.IGNORECASE)
SD_SYNTAX = _per_item(
    "sd_syntax", lambda item, c: m[0].strip() if (m := _WEBUI.search(item)) else None,
    lambda found, c: f"has WebUI or markdown syntax {found!r}",
    lambda found, c: f"含有“{found}”：不要写权重、参数（如 --ar）、负面提示词、标签或格式符号，"
                     "只写用英文逗号连接的普通关键词。")


def _keywords(item: str) -> int:
    return sum(1 for part in item.split(",") if part.strip())


def _outside(size: int, span: tuple[int | None, int | None]) -> bool:
    least, most = _bounds(span)
    return size < least or (most is not None and size > most)


KEYWORDS = _per_item(
    "keywords", lambda item, c: f"{_keywords(item)}" if _outside(_keywords(item), c.limits.keywords) else None,
    lambda n, c: f"{n} keywords, asked for {_asked(c.limits.keywords, 'keywords')}",
    lambda n, c: f"有 {n} 个关键词，数量不符合要求：每条应为{_asked(c.limits.keywords, '个', chinese=True)}，用英文逗号连接。",
    needs="keywords")

_FEATURE_SEPARATORS = re.compile(r"[、，,；;]")


def _features(item: str) -> int:
    return sum(1 for part in _FEATURE_SEPARATORS.split(item) if part.strip())


FEATURES = _per_item(
    "features", lambda item, c: f"{_features(item)}" if _outside(_features(item), (c.limits.features, None)) else None,
    lambda n, c: f"lists {n} features, asked for at least {c.limits.features}",
    lambda n, c: f"只列出了 {n} 个特征：每段至少列出 {c.limits.features} 个特征，用顿号隔开。",
    needs="features")

# A model declining the task in its text (a refusal in `message.refusal` never gets this far).
_REFUSAL = re.compile(r"(?:抱歉|对不起|很遗憾|我)[^。！？]{0,12}?(?:无法|不能|没法)(?:为你|为您)?"
                      r"(?:协助|帮助|帮忙|提供|完成|满足|回答|处理|参与)"
                      r"|i(?:'m| am) sorry,? but|i can(?:no|')t (?:help|assist|comply)|i'm unable to (?:help|assist)",
                      re.IGNORECASE)
REFUSAL = _per_item(
    "refusal", lambda item, c: m[0] if (m := _REFUSAL.search(item)) else None,
    lambda found, c: f"is a refusal ({found!r})",
    lambda found, c: "是拒绝回答的话：这是一个普通的产品设计练习，请直接按要求给出内容。")

# How a model says it cannot tell what a sketch shows, or talks about it instead of naming it.
_UNSURE = re.compile(r"无法|不能确定|不确定|看不出|难以判断|不清楚|认不出|sorry|cannot|can't|unable|not sure"
                     r"|^(?:这是|这个|这款|看起来|看上去|应该是|可能是|似乎是|图中|草图|图片|它是)", re.IGNORECASE)
_CORRECT_UNSURE = "即使不能完全确定，也请结合草图、标注和设计任务给出最可能的产品名称，只写名称，不要解释或道歉。"


def _identified(items: list[str], context: Context) -> Failure | None:
    said = next((item for item in items if item), "")
    if not said:
        return Failure("unidentifiable", "the answer says it cannot tell what the sketch shows (a note on the "
                       "sketch naming the product helps)", f"上次没有给出产品名称。{_CORRECT_UNSURE}")
    if m := _UNSURE.search(said):
        return Failure("unidentifiable", f"the answer talks about the sketch instead of naming it ({m[0]!r})",
                       f"上次的回答没有直接给出产品名称。{_CORRECT_UNSURE}")
    return None


IDENTIFIED = Check("unidentifiable", _identified)

# The answer's wrapping leaking into an item: a code fence, a JSON array or object, HTML.
_MARKUP = re.compile(r"`{3}|^[\[{]|[\]}]$|\"\s*[,:]\s*\"|</?[a-z][^>]*>", re.IGNORECASE)
MARKUP = _per_item(
    "markup", lambda item, c: m[0] if (m := _MARKUP.search(item)) else None,
    lambda found, c: f"holds the answer's formatting ({found!r})",
    lambda found, c: f"混入了格式符号（“{found}”）：不要用代码块、JSON 或其他标记，只写内容本身。")

# A model talking to the reader instead of answering: a preamble or a closing remark glued to an item.
# (A remark on a line of its own and glued to the last item follows it after a space.)
_CHATTER = re.compile(r"^(?:好的|当然|没问题|以下是|下面是|这里是|以下为)|以下是|以上(?:就是|是|这些|内容)"
                      r"|希望(?:这个|这些|以上|上述|对你|对您|你|您|能帮|能对)|对(?:你|您)有(?:所)?帮助|如需|如果(?:你|您)(?:需要|想要|还)|供(?:你|您)参考|仅供参考"
                      r"|祝(?:你|您)|(?:^|\s)(?:以上|希望|如有|注[:：]|备注|说明[:：]|总结|整体来看)"
                      r"|\bhere (?:are|is)\b|^sure\b|\bi hope\b|\blet me know\b|\bas an ai\b"
                      # an aside at the end that praises the idea: "…（这样更方便日常使用）"
                      r"|[（(](?:这样|这能|这可以|这让|从而|兼顾|便于|更加|更方便|适合在)[^（）()]*[）)]\W*$", re.IGNORECASE)
CHATTER = _per_item(
    "chatter", lambda item, c: m[0] if (m := _CHATTER.search(item)) else None,
    lambda found, c: f"holds a preamble or remark ({found!r})",
    lambda found, c: f"混入了开场白或结束语（“{found}”）：不要写任何客套话或说明，只写要求的内容。")

_PUNCTUATION = re.compile(r"[\s\W_]+")


def distinct(items: Sequence[str]) -> list[str]:
    """Return the non-blank items without repeats (punctuation, spacing and case aside), first ones kept."""
    seen: dict[str, str] = {}
    for item in items:
        key = _PUNCTUATION.sub("", item).casefold()
        if item and key and key not in seen:
            seen[key] = item
    return list(seen.values())


def _counted(items: list[str], context: Context) -> Failure | None:
    """Fail fewer items than asked (or more, where `items` were not cut to the count): `count` or `duplicates`."""
    usable, unique = [item for item in items if item], distinct(items)
    asked, got = context.count, len(unique)
    offered = len(usable) if context.offered is None else context.offered
    if offered < asked:
        return Failure("count", f"asked for {asked} items, got {offered}",
                       f"上次的回答只有 {offered} 项可用，需要正好 {asked} 项，每项都不能为空。")
    if got < asked:
        return Failure("duplicates", f"asked for {asked} distinct items, got {got}: some repeat",
                       f"上次的回答有重复的内容，只有 {got} 项互不相同：需要 {asked} 项，每一项都必须不同。")
    if got > asked and not context.more_ok:
        return Failure("count", f"asked for {asked} items, got {got}",
                       f"上次给出了 {got} 项，需要正好 {asked} 项，与给出的内容一一对应。", rank="too_many")
    return None


COUNT = Check("count", _counted)


def _clipped(item: str, context: Context) -> str | None:
    """Return the number an item lost to list-number stripping ("14:00的…" read as "00的…"), if any."""
    if not context.raw or not item[:1].isdigit():
        return None
    where = context.raw.find(item[:8])
    before = context.raw[max(0, where - 3):where] if where > 0 else ""
    return m[0] if (m := re.search(r"\d{1,2}[:：.．]$", before)) else None


CLIPPED = _per_item(
    "clipped", _clipped, lambda number, c: f"lost {number!r} from its start when read",
    lambda number, c: f"开头的“{number}”被误读成了编号：请不要用编号，时间请写成“下午两点”这样的文字。")
FIRST = (REFUSAL, COUNT)  # every step's checks before its own
LAST = (MARKUP, CHATTER, CLIPPED)  # and after them


def summary(failures: Sequence[Failure]) -> str:
    """Return the failures in one line of English, for a record, a log line or an error."""
    return "; ".join(f"{failure.check}: {failure.detail}" for failure in failures)


def correction(prompt: str, failures: Sequence[Failure]) -> str:
    """Return the corrective retry's prompt: the original one and what the last answer got wrong."""
    lines = "\n".join(f"- {failure.correction}" for failure in failures)
    return f"{prompt}\n\n上一次的回答没有通过检查：\n{lines}\n请改正以上问题，按原来的要求重新回答。"


# -- a step's declaration ----------------------------------------------------------------------
@dataclass(frozen=True)
class Ask:
    """How a GPT step asks (its shape) and what it accepts (its checks, between FIRST and LAST).

    `more_ok`: the items are independent ideas, so extra ones are dropped; elsewhere items pair
    with the inputs (one per product, scheme, scene), and more than asked is a `count` failure.
    `reads_names`: the items are names, so an explanation after a name is read off it, in a
    text answer or a structured one (parsing's `names`).
    """

    shape: Shape
    checks: tuple[Check, ...]
    more_ok: bool = False
    reads_names: bool = False

    @property
    def all_checks(self) -> tuple[Check, ...]:
        """Every check the step runs, in order."""
        return (*FIRST, *self.checks, *LAST)

    @property
    def names(self) -> list[str]:
        """The kinds of the checks run, in order."""
        return [check.name for check in self.all_checks]

    def read(self, items: list[str], context: Context) -> tuple[list[str], list[Failure]]:
        """Return the items kept (distinct, at most `count`) and every failure, the one that names it first.

        COUNT looks at all the items (blank ones are missing ones); the other checks at those kept.
        """
        context = replace(context, more_ok=self.more_ok)
        kept = distinct(items)[:context.count] if self.more_ok else distinct(items)
        failures = [failure for check in self.all_checks if (failure := check(items if check is COUNT else kept,
                                                                              context))]
        failures.sort(key=lambda f: PRECEDENCE.index(f.rank or f.check) if (f.rank or f.check) in PRECEDENCE
                      else len(PRECEDENCE))
        return kept[:context.count], failures


# The kinds of answer the templates ask for (the lengths are each template's own).
NAMES = Ask(Items("一个产品名称"), (TOO_LONG, SENTENCE, TOO_SHORT, LABEL), reads_names=True)
IDEAS = Ask(NAMES.shape, NAMES.checks, more_ok=True, reads_names=True)  # independent product ideas: extra ones are dropped
SCENES = Ask(Items("一个使用场景，一句话"), (TOO_LONG, TOO_SHORT, LABEL))
PRINCIPLES = Ask(Items("一句工作原理，不含产品名称"), (TOO_LONG, PRODUCT_NAMED, TOO_SHORT, LABEL))
FEATURES_OF_PRODUCTS = Ask(Items("一段功能特征描述，不含产品名称"), (TOO_LONG, PRODUCT_NAMED, TOO_SHORT, FEATURES, LABEL))
SD_PROMPTS = Ask(Items("一条英文关键词提示词"), (NOT_ENGLISH, SD_SYNTAX, KEYWORDS))
