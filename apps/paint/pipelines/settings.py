"""Everything the sketching app reads from settings/: the prompt templates and the image options.

Both are loaded once and checked when the server starts, so a broken file stops the server
instead of failing a participant later.

**Templates** are Jinja files named after their step (`rapid.products` renders
settings/rapid/products.j2). `SPECS` below is the one list of templates: the variables each
may use (with the sample values the startup check renders it with) and the answer it asks
for. Undefined variables are errors (StrictUndefined), and `counted` templates must state
their item count as `共 {count} 项` (the parser and the chat simulator both rely on it).
The lengths a template asks of each item (`不超过 12 个字`, `20 到 40 字`, `8 到 15 个`
keywords, `至少 3 个` features) are read from its text once, at startup (`Limits`): the
answer checks hold items to exactly what the model was told.

**Image options** come from settings/sd_options.json: a `defaults` object and, per pipeline,
one object per image kind (`scene`, `product`) whose keys override the defaults. It is the
only place the study's image settings are stated: the WebUI client sends exactly these
options and adds none. Keys are AUTOMATIC1111 txt2img fields plus `checkpoint` and `style`
(see agent.sd.build_payload).
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from agent.sd import build_payload

log = logging.getLogger(__name__)


class SettingsError(Exception):
    """The files under settings/ are missing or wrong; the server must not start."""


class TemplateCheckError(SettingsError):
    """A prompt template does not parse, or renders badly with its sample variables."""


# -- prompt templates ----------------------------------------------------------------------
@dataclass(frozen=True)
class TemplateSpec:
    """One template: the variables it gets (sample values for the check), what it asks for, and whether it counts.

    `count` is always the number of items asked for; lists are Python lists; `texts` are a
    participant's non-blank notes on a sketch.
    """

    sample: dict[str, Any]
    answer: str  # what the model's answer must be, for the people who edit prompts
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
PER_PRODUCT_SCENE = "one usage scene per product"
KEYWORD_LINES = "one English keyword line per scene (items have .product and .scene)"
PRINCIPLES = "one working-principle sentence per product"

SPECS: dict[str, TemplateSpec] = {
    # Type 0: rapid divergence.
    "rapid/products": TemplateSpec({"task": TASK, "count": 3}, "`count` product names"),
    "rapid/scenes": TemplateSpec({"task": TASK, "products": PRODUCTS, "count": 3}, PER_PRODUCT_SCENE),
    "rapid/sd_prompts": TemplateSpec({"items": PAIRS, "count": 3}, KEYWORD_LINES),
    "rapid/abstracts": TemplateSpec({"task": TASK, "products": PRODUCTS, "count": 3}, PRINCIPLES),
    # Type 1: deep divergence (identify is a vision call: the sketch is attached).
    "deep/identify": TemplateSpec({"task": TASK, "texts": TEXTS, "count": 1}, "the sketched product's name"),
    "deep/products": TemplateSpec({"task": TASK, "sketch": "折叠训练凳", "texts": TEXTS, "count": 3},
                                  "related product names (`sketch` is the identified name)"),
    "deep/scenes": TemplateSpec({"task": TASK, "products": PRODUCTS, "count": 3}, PER_PRODUCT_SCENE),
    "deep/sd_prompts": TemplateSpec({"items": PAIRS, "count": 3}, KEYWORD_LINES),
    "deep/abstracts": TemplateSpec({"task": TASK, "products": PRODUCTS, "count": 3}, PRINCIPLES),
    "deep/concretes": TemplateSpec({"task": TASK, "products": PRODUCTS, "count": 3},
                                   "one feature description (20-50 characters, 3+ features) per product"),
    # Type 2: naming (a vision call: every sketch attached, in order) and selection.
    "naming/names": TemplateSpec({"task": TASK, "schemes": SCHEMES, "count": 2},
                                 "one 5-8 character name per scheme (count = number of schemes)"),
    "naming/select": TemplateSpec({"task": TASK, "schemes": NAMED, "names": [s["name"] for s in NAMED],
                                   "count": 1},
                                  "the chosen names, copied from the `候选：` line (count = min(selectNum, "
                                  "distinct names))"),
    # Type 3: convergence group two; `per_scheme` (= num) items for each scheme, `count` in all.
    "group_two/scenes": TemplateSpec({"schemes": SCHEMES, "per_scheme": 2, "count": 4},
                                     "`per_scheme` usage scenes per scheme, scheme by scheme"),
    "group_two/scene_prompts": TemplateSpec({"scenes": SCENES, "count": 3}, "one English keyword line per scene"),
    "group_two/concretes": TemplateSpec({"schemes": SCHEMES, "per_scheme": 2, "count": 4},
                                        "`per_scheme` feature descriptions per scheme, scheme by scheme"),
    "group_two/product_prompts": TemplateSpec({"features": FEATURES, "count": 3},
                                              "one English keyword line per product shot"),
    # Stable Diffusion prompts around the keywords GPT wrote.
    "sd/scene_positive": TemplateSpec({"keywords": "folding bench, city park, morning light"},
                                      "the SD prompt of a scene picture: keywords + the study's suffix",
                                      counted=False),
    "sd/product_positive": TemplateSpec({"keywords": "folding bench, aluminium frame"},
                                        "the SD prompt of a product shot: + white background, industrial "
                                        "design", counted=False),
    "sd/scene_negative": TemplateSpec({}, "the SD negative prompt: no people, text, watermarks, low quality, "
                                      "cartoon styles", counted=False),
    "sd/product_negative": TemplateSpec({}, "the scene negative (included) + cluttered backgrounds",
                                        counted=False),
}

SUFFIX = ".j2"
COUNT = re.compile(r"共\s*(\d+)\s*项")
# How a template states the length of each item: characters ("不超过 12 个字", "20 到 40 字",
# "5 到 8 个汉字"), keywords of an SD prompt ("8 到 15 个"), features ("至少 3 个").
CHARS_RANGE = re.compile(r"(\d+)\s*到\s*(\d+)\s*个?汉?字")
CHARS_AT_MOST = re.compile(r"不超过\s*(\d+)\s*个?字")
KEYWORDS_RANGE = re.compile(r"(\d+)\s*到\s*(\d+)\s*个(?![汉字])")
FEATURES_AT_LEAST = re.compile(r"至少\s*(\d+)\s*个")
Span = tuple[int | None, int]  # (fewest or None, most)


def stated_count(text: str) -> int | None:
    """Return N of the last `共 N 项` in `text`, or None when there is none."""
    found = COUNT.findall(text)
    return int(found[-1]) if found else None


@dataclass(frozen=True)
class Limits:
    """The lengths a template asks of each item; None where it states none."""

    chars: Span | None = None
    keywords: Span | None = None
    features: int | None = None

    @classmethod
    def stated(cls, text: str) -> Limits:
        """Return the limits the first statement of each kind in `text` gives."""
        span, at_most = CHARS_RANGE.search(text), CHARS_AT_MOST.search(text)
        chars = (int(span[1]), int(span[2])) if span else (None, int(at_most[1])) if at_most else None
        keywords, features = KEYWORDS_RANGE.search(text), FEATURES_AT_LEAST.search(text)
        return cls(chars, (int(keywords[1]), int(keywords[2])) if keywords else None,
                   int(features[1]) if features else None)


class PromptBook:
    """The checked templates of one settings directory."""

    def __init__(self, settings_dir: Path, specs: Mapping[str, TemplateSpec] = SPECS,
                 asks: Mapping[str, Any] | None = None) -> None:
        """Load and check every template.

        `asks` maps a template to its GPT step's declaration (an answers.Ask, from the pipeline
        modules): the template must state every limit the step's checks read (`Check.needs`).
        """
        self.settings_dir = Path(settings_dir)
        self.specs = dict(specs)
        self.asks = dict(asks or {})
        # What each template asks of an item, from its sample rendering (never a participant's words).
        self.limits: dict[str, Limits] = {}
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(self.settings_dir)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # plain-text prompts, never HTML
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        problems = [problem for name in self.specs if (problem := self._check(name))]
        problems += [f"{self.path(name)}: a pipeline step asks with it, but SPECS has no such template"
                     for name in self.asks if name not in self.specs]
        if problems:
            raise TemplateCheckError("prompt templates failed the startup check:\n  "
                                     + "\n  ".join(problems))
        self._warn_unused()

    def render(self, name: str, **variables: Any) -> str:
        """Return template `name` rendered with `variables`, without surrounding whitespace."""
        return self._env.get_template(name + SUFFIX).render(**variables).strip()

    def path(self, name: str) -> str:
        """Return the template's file name relative to the settings directory's parent."""
        return f"{self.settings_dir.name}/{name}{SUFFIX}"

    def _check(self, name: str) -> str | None:
        """Return what is wrong with template `name`, or None."""
        where, spec = self.path(name), self.specs[name]
        file = self.settings_dir / (name + SUFFIX)
        if not file.is_file():
            return f"{where}: missing (every pipeline step needs its template)"
        try:
            source = file.read_text(encoding="utf-8")
            parsed = self._env.parse(source, name=name + SUFFIX)
        except (OSError, UnicodeDecodeError) as e:
            return f"{where}: cannot be read: {e}"
        except jinja2.TemplateSyntaxError as e:
            return f"{where}, line {e.lineno}: syntax error: {e.message}"
        unknown = sorted(meta.find_undeclared_variables(parsed) - set(spec.sample))
        if unknown:
            return (f"{where}: unknown variable {', '.join(repr(v) for v in unknown)} "
                    f"(this template gets: {', '.join(sorted(spec.sample)) or 'no variables'})")
        try:
            text = self.render(name, **spec.sample)
        except jinja2.TemplateError as e:  # e.g. an attribute typo: `item.prodcut`
            return f"{where}: fails to render with sample variables: {e}"
        except Exception as e:  # a filter applied to the wrong type, and the like
            return f"{where}: fails to render with sample variables: {type(e).__name__}: {e}"
        if not text:
            return f"{where}: renders to an empty prompt"
        if spec.counted and stated_count(text) != spec.sample["count"]:
            return (f"{where}: must end its request with '共 {{{{ count }}}} 项' "
                    "(the last '共 N 项' tells the model, the parser and the simulator how many items)")
        limits = self.limits[name] = Limits.stated(text)
        ask = self.asks.get(name)
        needs = {check.needs for check in ask.checks if check.needs} if ask is not None else set()
        missing = sorted(need for need in needs if getattr(limits, need) is None)
        if missing:
            return (f"{where}: its step checks the {' and '.join(missing)} of each item, but the template "
                    "states no such limit (write e.g. '不超过 12 个字', '20 到 40 字', '8 到 15 个' keywords, "
                    "'至少 3 个' features)")
        return None

    def _warn_unused(self) -> None:
        for file in sorted(self.settings_dir.rglob("*" + SUFFIX)):
            name = file.relative_to(self.settings_dir).with_suffix("").as_posix()
            if name not in self.specs:
                log.warning("template %s is not used by any pipeline step", self.path(name))


# -- image options ------------------------------------------------------------------------
FILE_NAME = "sd_options.json"
# The image kinds each pipeline draws; every one needs an entry in the file.
KINDS = {"rapid": ("scene",), "deep": ("scene",), "group_two": ("scene", "product")}
POSITIVE_INTS = ("width", "height", "steps")

SDOptions = dict[tuple[str, str], dict[str, Any]]


def _section(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise SettingsError(f"{where}: '{key}' must be an object")
    return value


def _check(options: dict[str, Any], where: str) -> None:
    """Raise SettingsError unless build_payload accepts `options` and the sizes make sense."""
    try:
        build_payload("startup check", "", options)
    except ValueError as e:
        raise SettingsError(f"{where}: {e}") from None
    for key in POSITIVE_INTS:
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise SettingsError(f"{where}: '{key}' must be a positive integer, got {value!r}")


def load_sd_options(settings_dir: Path) -> SDOptions:
    """Return the merged options for each (pipeline, kind), or raise SettingsError."""
    file = Path(settings_dir) / FILE_NAME
    where = f"{Path(settings_dir).name}/{FILE_NAME}"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise SettingsError(f"{where}: cannot be read: {e}") from None
    except ValueError as e:
        raise SettingsError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{where}: must be a JSON object")
    defaults = _section(data, "defaults", where)
    merged: SDOptions = {}
    for pipeline, kinds in KINDS.items():
        section = _section(data, pipeline, where)
        for kind in kinds:
            options = {**defaults, **_section(section, kind, f"{where} '{pipeline}'")}
            _check(options, f"{where} {pipeline}.{kind}")
            merged[(pipeline, kind)] = options
    return merged
