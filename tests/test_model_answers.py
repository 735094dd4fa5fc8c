"""The corpus of realistic model answers (tests/corpus/) replayed through the steps as they run today.

Each entry of tests/corpus/model_answers.json is one answer a GPT-4o-class model could give to
one step's prompt, with what a careful reader takes from it: the items, or the failure that is
right (tests/corpus/README.md). `Replayer.replay` renders the step's real template with the
entry's context and calls `Steps.ask` as the pipeline does, through the real GPT client and
the chat simulator over loopback HTTP; the simulator answers the entry's whole message
(content, finish_reason, refusal) on every attempt. What comes back, the items or the error,
is compared with the entry's expectation.

Entries the current code gets wrong are listed in KNOWN_WRONG and run as xfail, so the suite
stays green while the gap stays visible; every other entry must pass. Issue 10 will empty it.
`python -m tests.test_model_answers` prints how many entries the current code gets right,
per step and per mode, and where KNOWN_WRONG no longer matches.
"""
from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.errors import BackendError
from agent.gpt import GPTClient
from apps.paint.pipelines import PaintApp
from apps.paint.pipelines.parsing import match_choices
from apps.paint.pipelines.settings import PromptBook, stated_count
from apps.paint.pipelines.steps import Flow, ShortAnswer, Steps
from apps.records import Trace
from config import from_env
from core.image_store import decode_image
from simulators.chat import ChatSimulator, Scripted
from tests.helpers import SIM_KEY, SKETCH

CORPUS = Path(__file__).resolve().parent / "corpus" / "model_answers.json"
MIN_ENTRIES = 100

# The failure kinds and modes tests/corpus/README.md documents.
FailureKind = Literal["count", "duplicates", "too_long", "sentence", "product_named", "not_english", "sd_syntax",
                      "unidentifiable", "refusal", "cut_off", "content_filter"]
Deviation = Literal["clean", "list_style", "preamble", "closing_remark", "label", "markdown", "explanation",
                    "code_fence", "json", "per_scheme", "reason", "clock_time", "decimal"]

# Entries the current code gets wrong: silent garbage, or a failure of the wrong kind.
# Issue 10 ("Stimuli that survive a real model") will empty this set.
KNOWN_WRONG: set[str] = {
    "deep-abstracts-bold-product-labels", "deep-abstracts-product-named",
    "deep-abstracts-product-named-once", "deep-concretes-paragraphs",
    "deep-concretes-product-named",
    "deep-identify-cannot-tell", "deep-identify-cannot-tell-asks-back", "deep-identify-cannot-tell-short",
    "deep-identify-content-filter-empty", "deep-identify-name-dash-explanation",
    "deep-identify-refusal-field", "deep-identify-sentence", "deep-identify-too-long",
    "deep-products-cut-off", "deep-products-numbered-with-explanations",
    "deep-scenes-cut-off",
    "deep-scenes-refusal-in-text", "deep-sd-prompts-chinese-product-names",
    "deep-sd-prompts-positive-negative-pairs",
    "group-two-concretes-cut-off", "group-two-concretes-paragraphs",
    "group-two-product-prompts-chinese-names",
    "group-two-product-prompts-flags",
    "group-two-product-prompts-quality-weights", "group-two-scene-prompts-chinese",
    "group-two-scene-prompts-content-filter-partial",
    "group-two-scene-prompts-negative-inline",
    "naming-names-cut-off", "naming-names-duplicates",
    "naming-names-forty-characters", "naming-names-one-extra",
    "naming-names-with-explanations",
    "naming-select-duplicate",
    "naming-select-too-many",
    "rapid-abstracts-bold-product-labels", "rapid-abstracts-paragraphs",
    "rapid-abstracts-product-labels",
    "rapid-abstracts-product-named", "rapid-abstracts-product-named-once",
    "rapid-products-bold-name-with-explanation",
    "rapid-products-content-filter-partial", "rapid-products-cut-off", "rapid-products-duplicate-padding",
    "rapid-products-duplicates", "rapid-products-forty-character-name",
    "rapid-products-refusal-field", "rapid-products-refusal-in-text",
    "rapid-scenes-cut-off",
    "rapid-scenes-product-prefix", "rapid-scenes-two-for-first-product",
    "rapid-sd-prompts-aspect-flag", "rapid-sd-prompts-attention-weights", "rapid-sd-prompts-chinese",
    "rapid-sd-prompts-cut-off",
    "rapid-sd-prompts-negative-lines",
}

# The failure kind each error of the current code stands for. An error not listed here is
# no kind the corpus knows: today a refusal or a filtered answer with no text is a
# GPTEmptyAnswer ("empty answer"), which names neither.
KIND_OF_ERROR: dict[type[BackendError], str] = {ShortAnswer: "count"}

TRAILING = "。；;，,、.．!！"


def canonical(item: str) -> str:
    """Return `item` with runs of white space folded and trailing punctuation dropped."""
    return " ".join(item.split()).rstrip(TRAILING).rstrip()


# -- the entries ---------------------------------------------------------------------------
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ItemsExpected(Strict):
    """The items a careful reader takes from the answer, in order."""

    items: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


class FailureExpected(Strict):
    """The answer must not give items; the step fails for this reason."""

    failure: FailureKind


class Entry(Strict):
    """One recorded answer to one step's prompt, and what must come of it."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$")]
    step: Annotated[str, Field(pattern=r"^[a-z_]+\.[a-z_]+$")]
    mode: Deviation | FailureKind  # what the answer shows; a failure kind when it provokes one
    context: dict[str, Any]  # the template's variables, `count` included
    answer: str  # the message content; "" for none (a refusal, a filtered answer)
    finish_reason: Literal["stop", "length", "content_filter"]
    refusal: Annotated[str, Field(min_length=1)] | None
    expect: ItemsExpected | FailureExpected
    note: str | None = None

    @property
    def count(self) -> int:
        return self.context["count"]

    @model_validator(mode="after")
    def _consistent(self) -> Entry:
        prefix = self.step.replace(".", "-").replace("_", "-") + "-"
        if not self.id.startswith(prefix):
            raise ValueError(f"the id must start with {prefix!r}")
        count = self.context.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("context.count must be a positive integer")
        expect = self.expect
        if isinstance(expect, ItemsExpected):
            if len(expect.items) != count:
                raise ValueError(f"expects {len(expect.items)} items but the step asks for {count}")
            if len(set(expect.items)) != len(expect.items):
                raise ValueError("expects the same item twice")
            unclean = [item for item in expect.items if item != canonical(item)]
            if unclean:
                raise ValueError(f"write expected items without trailing punctuation or extra spaces: {unclean}")
        # What the message itself says decides these kinds, whatever its text.
        implied = {"length": "cut_off", "content_filter": "content_filter"}.get(self.finish_reason)
        if self.refusal is not None:
            implied = implied or "refusal"
        kind = getattr(expect, "failure", None)
        if implied is not None and kind != implied:
            raise ValueError(f"finish_reason {self.finish_reason!r} / refusal: the failure must be {implied!r}")
        if kind in ("cut_off", "content_filter") and implied != kind:
            raise ValueError(f"failure {kind!r} needs the matching finish_reason")
        if not self.answer.strip() and implied is None:
            raise ValueError("an empty answer needs a refusal or a content_filter finish_reason")
        return self


def load_raw() -> list[dict[str, Any]]:
    """Return the corpus as stored: a JSON list of entry objects."""
    data = json.loads(CORPUS.read_text(encoding="utf-8"))
    assert isinstance(data, list), f"{CORPUS.name} must hold a JSON list"
    return data


def load() -> list[Entry]:
    """Return the entries that the model accepts (the shape test names the others)."""
    entries = []
    for raw in load_raw():
        try:
            entries.append(Entry.model_validate(raw))
        except ValidationError:
            pass
    return entries


def gpt_steps(book: PromptBook) -> set[str]:
    """Return the step names of every template under settings/ that asks GPT for counted items."""
    on_disk = {file.relative_to(book.settings_dir).with_suffix("").as_posix()
               for file in book.settings_dir.rglob("*.j2")}
    return {name.replace("/", ".") for name in on_disk if name in book.specs and book.specs[name].counted}


def pipeline_count(context: dict[str, Any]) -> int | None:
    """Return the count the pipelines ask for with these variables, where the variables fix it."""
    if "per_scheme" in context:  # group two: per_scheme items for each scheme
        return len(context["schemes"]) * context["per_scheme"]
    if "names" in context:  # the selection: at most the candidates, checked apart
        return None
    for key in ("products", "items", "scenes", "features", "schemes"):  # one item per input
        if key in context:
            return len(context[key])
    return None


def context_problems(entry: Entry, book: PromptBook, steps: set[str]) -> list[str]:
    """Return what is wrong with the entry's step and context, as the pipelines would render them."""
    if entry.step not in steps:
        return [f"step {entry.step!r} is not a GPT step under settings/ ({', '.join(sorted(steps))})"]
    template = entry.step.replace(".", "/")
    wanted = set(book.specs[template].sample)
    if set(entry.context) != wanted:
        return [f"context keys {sorted(entry.context)} are not the template's variables {sorted(wanted)}"]
    problems = []
    prompt = book.render(template, **entry.context)
    if stated_count(prompt) != entry.count:
        problems.append(f"the rendered prompt does not ask for {entry.count} items")
    expected = pipeline_count(entry.context)
    if expected is not None and expected != entry.count:
        problems.append(f"the pipeline would ask for {expected} items with this context, not {entry.count}")
    if "names" in entry.context:
        names = list(dict.fromkeys(scheme["name"] for scheme in entry.context["schemes"]))
        if entry.context["names"] != names or entry.count > len(names):
            problems.append("the candidates must be the schemes' distinct names, at least `count` of them")
    return problems


# -- replaying an answer through the steps -------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What the step made of an answer: its items, or the failure kind of its error."""

    items: list[str] | None = None
    failure: str | None = None  # None with an error: no kind the corpus knows
    error: str | None = None


def verdict(entry: Entry, outcome: Outcome) -> str | None:
    """Return how the outcome differs from the entry's expectation, or None when it is right."""
    if isinstance(entry.expect, ItemsExpected):
        if outcome.items is None:
            return f"expected items {entry.expect.items}, got an error: {outcome.error}"
        got = [canonical(item) for item in outcome.items]
        return None if got == entry.expect.items else f"expected items {entry.expect.items}, got {got}"
    if outcome.items is not None:
        return f"expected failure {entry.expect.failure!r}, got items {outcome.items}"
    if outcome.failure != entry.expect.failure:
        return f"expected failure {entry.expect.failure!r}, got {outcome.failure!r}: {outcome.error}"
    return None


SKETCH_IMAGE = decode_image(SKETCH)
# Vision steps and how many sketches the pipeline attaches (deep.run, naming.run).
IMAGES = {"deep.identify": lambda context: 1, "naming.names": lambda context: len(context["schemes"])}


class Replayer:
    """A chat simulator answering the entry's message, and the real GPT client and steps on it."""

    def __init__(self, paint: PaintApp) -> None:
        self.paint = paint
        self.chat = ChatSimulator(api_key=SIM_KEY)

    def __enter__(self) -> Replayer:
        self.chat.start()
        self.gpt = GPTClient.from_config(from_env({
            "OPENAI_API_KEY": SIM_KEY, "OPENAI_BASE_URL": f"{self.chat.url}/v1",
            "GPT_TIMEOUT": "10", "GPT_MAX_RETRIES": "0"}))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.gpt.close()
        self.chat.stop()

    def replay(self, entry: Entry) -> Outcome:
        """Ask the entry's step as its pipeline does, the model answering the entry every time."""
        self.chat.script = Scripted(entry.answer or None, entry.finish_reason, entry.refusal)
        variables = {key: value for key, value in entry.context.items() if key != "count"}
        images = [SKETCH_IMAGE] * IMAGES[entry.step](variables) if entry.step in IMAGES else []
        # The selection keeps only the candidates it names (naming.run).
        keep = (lambda items: match_choices(items, variables["names"])) if "names" in variables else None
        with Flow(1, sequential=True) as flow:
            no_pool: Any = None  # ask() draws no images
            steps = Steps(self.paint.book, self.paint.sd_options, self.gpt, no_pool, Trace(), flow)
            try:
                items = steps.ask(entry.step, entry.count, images=images, keep=keep, **variables)
            except BackendError as error:
                return Outcome(failure=KIND_OF_ERROR.get(type(error)), error=f"{type(error).__name__}: {error}")
        return Outcome(items=items)


# -- the tests -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def replayer(paint: PaintApp):
    with Replayer(paint) as replaying:
        yield replaying


def test_every_entry_has_the_documented_shape():
    raws = load_raw()
    problems = []
    for index, raw in enumerate(raws):
        try:
            Entry.model_validate(raw)
        except ValidationError as e:
            problems.append(f"entry {index} ({raw.get('id')!r}): {e}")
    ids = Counter(raw.get("id") for raw in raws)
    problems += [f"id {name!r} is used {n} times" for name, n in ids.items() if n > 1]
    assert not problems, "\n".join(problems)


def test_every_context_is_what_its_step_renders_and_asks_for(paint: PaintApp):
    steps = gpt_steps(paint.book)
    problems = [f"{entry.id}: {problem}" for entry in load() for problem in context_problems(entry, paint.book, steps)]
    assert not problems, "\n".join(problems)


def test_corpus_covers_every_gpt_template_and_holds_enough_entries(paint: PaintApp):
    steps = gpt_steps(paint.book)
    assert steps, "no GPT templates found under settings/"
    entries = load()
    covered = Counter(entry.step for entry in entries)
    assert not steps - set(covered), f"no corpus entry for {sorted(steps - set(covered))}"
    assert len(entries) >= MIN_ENTRIES


def test_known_wrong_lists_only_corpus_entries():
    unknown = KNOWN_WRONG - {raw.get("id") for raw in load_raw()}
    assert not unknown, f"KNOWN_WRONG names entries the corpus does not hold: {sorted(unknown)}"


def _params() -> list[Any]:
    wrong = pytest.mark.xfail(strict=False, reason="issue 10: the current parsing and checks get this answer wrong")
    return [pytest.param(raw, id=raw.get("id"), marks=wrong if raw.get("id") in KNOWN_WRONG else ())
            for raw in load_raw()]


@pytest.mark.parametrize("raw", _params())
def test_answer_gives_the_expected_items_or_failure(raw: dict[str, Any], replayer: Replayer):
    entry = Entry.model_validate(raw)
    difference = verdict(entry, replayer.replay(entry))
    assert difference is None, difference


# -- the report ------------------------------------------------------------------------------
def main() -> int:
    """Print how many corpus entries the current code gets right, per step and mode; 1 if KNOWN_WRONG drifted."""
    logging.basicConfig(level=logging.ERROR)  # not the steps' warnings about every short answer
    entries = load()
    with Replayer(PaintApp()) as replaying:
        outcomes = {entry.id: replaying.replay(entry) for entry in entries}
    wrong = {entry.id: difference for entry in entries
             if (difference := verdict(entry, outcomes[entry.id])) is not None}
    garbage = sum(outcomes[entry_id].items is not None for entry_id in wrong)
    print(f"{len(entries) - len(wrong)} of {len(entries)} entries right; of the {len(wrong)} wrong, {garbage} gave "
          f"items a participant would see, {len(wrong) - garbage} an error of the wrong kind or none")
    total, right = Counter(entry.step for entry in entries), Counter(e.step for e in entries if e.id not in wrong)
    for step in sorted(total):
        print(f"  {step:28} {right[step]:3} of {total[step]:3} right")
    print("wrong, by mode:")
    for mode, n in Counter(entry.mode for entry in entries if entry.id in wrong).most_common():
        print(f"  {mode:16} {n:3} of {sum(entry.mode == mode for entry in entries):3}")
    print("wrong, by expectation:")
    for kind, n in Counter(getattr(e.expect, "failure", "items") for e in entries if e.id in wrong).most_common():
        print(f"  {kind:16} {n:3}")
    drift = sorted(set(wrong) ^ KNOWN_WRONG)
    for entry_id in drift:
        print(f"KNOWN_WRONG drift: {entry_id} is {'wrong' if entry_id in wrong else 'right'}"
              + (f": {wrong[entry_id]}" if entry_id in wrong else ""))
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())
