"""Simulated backends for `python app.py --demo`: a whole server on a machine with no keys and no GPU.

Starts, in this process, one chat-completions simulator and several Stable Diffusion WebUI
simulators with small realistic latencies, and returns the settings that point the server
at them. Everything they answer is fake (hash-derived text and coloured blocks): a demo,
never a study. Tune with DEMO_GPT_LATENCY (seconds per GPT call, default 0.3),
DEMO_SD_LATENCY (seconds per image, default 1.0) and DEMO_SD_INSTANCES (default 6). With
`realistic` (`python app.py --demo --messy [--seed N]`), the chat simulator answers like a real
model (`simulators.chat.Realistic`), so the server's parsing, checks and retries show.
"""
from __future__ import annotations

import atexit
import logging
import os
import secrets
from collections.abc import Mapping
from typing import Any

from simulators.chat import ChatSimulator, Realistic
from simulators.webui import SDWebUISimulator

log = logging.getLogger(__name__)

DEPLOYMENT = "demo-gpt"


def _number(env: Mapping[str, str], name: str, default: float, cast: type = float) -> Any:
    raw = env.get(name)
    try:
        return cast(raw) if raw not in (None, "") else cast(default)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def start_demo_backends(env: Mapping[str, str] | None = None, realistic: Realistic | None = None) -> dict[str, Any]:
    """Start the simulated GPT and SD backends and return config overrides pointing at them."""
    env = os.environ if env is None else env
    gpt_latency = _number(env, "DEMO_GPT_LATENCY", 0.3)
    sd_latency = _number(env, "DEMO_SD_LATENCY", 1.0)
    count = max(1, _number(env, "DEMO_SD_INSTANCES", 6, int))
    key = secrets.token_urlsafe(16)  # a fresh key per run: only this process knows it
    chat = ChatSimulator(api_key=key, latency=gpt_latency, realistic=realistic).start()
    sds = [SDWebUISimulator(latency=sd_latency).start() for _ in range(count)]
    atexit.register(_stop, chat, sds)
    log.warning("DEMO MODE: GPT and Stable Diffusion are SIMULATORS in this process (fake text and "
                "images): chat at %s (%.2fs per call, %s), %d SD WebUI simulators (%.2fs per image)",
                chat.url, gpt_latency, realistic or "clean answers", count, sd_latency)
    return {
        "AZURE_OPENAI_ENDPOINT": chat.url,
        "AZURE_OPENAI_API_KEY": key,
        "AZURE_OPENAI_DEPLOYMENT": DEPLOYMENT,
        "AZURE_OPENAI_VISION_DEPLOYMENT": DEPLOYMENT,
        "OPENAI_API_KEY": None,
        "SD_ENDPOINTS": [sd.endpoint for sd in sds],
    }


def _stop(chat: ChatSimulator, sds: list[SDWebUISimulator]) -> None:
    for sd in sds:
        sd.stop()
    chat.stop()
