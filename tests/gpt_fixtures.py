"""Fixtures and helpers of the GPT tests: a chat simulator per test and clients pointed at it."""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.gpt import GPTClient
from config import from_env
from simulators.chat import ChatSimulator

SIM_KEY = "sim-key-5f2c9a"
API_VERSION = "2024-10-21"
IMAGE_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()
IMAGE_URI = f"data:image/png;base64,{IMAGE_B64}"


@pytest.fixture
def chat_sim() -> Iterator[ChatSimulator]:
    """Run a chat simulator on a free loopback port for one test."""
    with ChatSimulator(api_key=SIM_KEY, hang_timeout=10.0) as sim:
        yield sim


@pytest.fixture
def make_gpt(chat_sim: ChatSimulator) -> Iterator[Callable[..., GPTClient]]:
    """Return a factory of GPT clients on `chat_sim` ("azure" or "openai"), closed after the test."""
    made: list[GPTClient] = []

    def make(provider: str = "azure", **settings: Any) -> GPTClient:
        if provider == "azure":
            env = {"AZURE_OPENAI_ENDPOINT": chat_sim.url, "AZURE_OPENAI_API_KEY": SIM_KEY,
                   "AZURE_OPENAI_API_VERSION": API_VERSION}
        else:
            env = {"OPENAI_API_KEY": SIM_KEY, "OPENAI_BASE_URL": f"{chat_sim.url}/v1"}
        env.update({"GPT_TIMEOUT": "5", "GPT_MAX_RETRIES": "0"})
        env.update({name: str(value) for name, value in settings.items()})
        client = GPTClient.from_config(from_env(env))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()



def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    """POST `body` (JSON, or raw bytes) and return (status, lower-cased headers, JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, json.load(response)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, json.load(e)
