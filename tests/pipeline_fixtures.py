"""Fixtures of the pipeline tests: a chat simulator, three SD simulators and a PaintApp on them."""
from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from agent.gpt import GPTClient
from agent.pool import SDInstancePool
from apps.paint.pipelines import PaintApp
from apps.records import Trace
from simulators.chat import ChatSimulator
from simulators.png import read_png_header
from simulators.webui import SDWebUISimulator
from tests.gpt_fixtures import chat_sim, make_gpt  # noqa: F401  (fixtures used below)
from tests.helpers import PNG_1PX
from tests.sd_fixtures import sd_pools, sd_sims  # noqa: F401  (fixtures used below)

SKETCH = f"data:image/png;base64,{PNG_1PX}"
TASK = "设计一款运动辅助产品"
ITEM_KEYS = {"type", "text", "image", "combinations"}


@dataclass
class Backends:
    """The simulators and clients one test generates with."""

    chat: ChatSimulator
    sds: list[SDWebUISimulator]
    gpt: GPTClient
    pool: SDInstancePool


@pytest.fixture(scope="session")
def paint() -> PaintApp:
    """The paint app on the real settings/ directory (checked once per session)."""
    return PaintApp()


@pytest.fixture
def backends(chat_sim, make_gpt, sd_sims, sd_pools) -> Backends:  # noqa: F811
    """Three SD simulators in a pool and a GPT client, all on loopback."""
    sds = [sd_sims() for _ in range(3)]
    return Backends(chat_sim, sds, make_gpt(), sd_pools([sd.url for sd in sds]))


@pytest.fixture
def generate(paint: PaintApp, backends: Backends) -> Callable[..., tuple[dict[str, Any], Trace]]:
    """Return `generate(type, prompts)` -> (data, trace), validating like the route does."""

    def run(type_: int, prompts: dict[str, Any], trace: Trace | None = None) -> tuple[dict[str, Any], Trace]:
        trace = trace if trace is not None else Trace()
        request = paint.read(type_, prompts)
        answer = paint.run(type_, request, backends.gpt, backends.pool, trace)
        return answer.model_dump(mode="json", by_alias=True), trace

    return run


def deep_prompts(scheme_id: Any = 2, texts: list[str] | None = None) -> dict[str, Any]:
    """Return type 1 prompts as the client sends them."""
    return {"designTask": TASK, "designTexts": ["可折叠", "带计数"] if texts is None else texts,
            "designImage": SKETCH, "schemeId": scheme_id}


def naming_prompts(schemes: int = 4, select: int = 2) -> dict[str, Any]:
    """Return type 2 prompts with `schemes` sketches."""
    return {"designTask": TASK, "selectNum": select,
            "schemes": [{"designTexts": [f"标注{i}"], "designImage": SKETCH} for i in range(schemes)]}


def group_two_prompts(schemes: int = 1, num: int = 3) -> dict[str, Any]:
    """Return type 3 prompts with `schemes` selected schemes."""
    return {"selectedSchemes": [{"designTexts": [f"方案{i}", "轻便"]} for i in range(schemes)], "num": num}


def check_item(item: dict[str, Any], kind: str) -> None:
    """Assert `item` is a `kind` item with all four keys and the right fields filled."""
    assert set(item) == ITEM_KEYS and item["type"] == kind
    if kind.endswith("Image"):
        assert item["text"] is None and item["combinations"] is None
        check_png(item["image"])
    elif kind.endswith("Text"):
        assert item["image"] is None and item["combinations"] is None
        assert isinstance(item["text"], str) and item["text"].strip()


def check_png(image: Any) -> tuple[int, int]:
    """Assert `image` is raw base64 (no data: prefix) of a valid PNG; return its size."""
    assert isinstance(image, str) and image and not image.startswith("data:")
    return read_png_header(base64.b64decode(image, validate=True))


def steps_of(trace: Trace, kind: str) -> list[str]:
    """Return the step names of the trace's `kind` entries, in order."""
    return [entry.step for entry in trace.entries if entry.kind == kind]
