"""What tests build, check and wait with (no fixtures: those are in tests/conftest.py).

- Images and request bodies in the web client's shape: `PNG_1PX`, `SKETCH`, `scheme`,
  `save_body`, `body`, `PROMPTS` and `post_generate` for /generate, `small_payload` for a WebUI.
- The simulated backends: `SIM_KEY`, `API_VERSION`, `Sims` and `backend_settings`, the
  settings of an app pointed at them.
- Checks of what came back: `decode_png`, `check_item`, `check_rapid`, `all_records`,
  `image_steps`.
- Waiting: `wait_until` polls a condition, `Worker` runs a call on a thread.
- The server as a process: `ServerProcess` runs `GUNICORN` or `DEV_SERVER` in an environment
  from `server_env`, `answers_ping` says when it is up.
"""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from flask.testing import FlaskClient
from pymongo.database import Database

from apps.records import COLLECTION
from config import from_env
from simulators.chat import ChatSimulator
from simulators.png import read_png_header
from simulators.webui import SDWebUISimulator

# -- images and request bodies ------------------------------------------------------------
PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
SKETCH = f"data:image/png;base64,{PNG_1PX}"  # an image as the web client sends it
TASK = "设计一款运动辅助产品"


def scheme(name: str = "", image_b64: str = PNG_1PX) -> dict[str, Any]:
    """Return a scheme shaped like the ones the web client saves."""
    return {
        "name": name,
        "canvasSvg": '<svg xmlns="http://www.w3.org/2000/svg"><path d="M0 0L1 1"/></svg>',
        "canvasImage": f"data:image/png;base64,{image_b64}",
        "paths": [{"drawMode": True, "strokeColor": "#000", "strokeWidth": 5, "paths": [{"x": 1.5, "y": 2}]}],
        "texts": [{"text": "可折叠", "position": {"x": 10, "y": 20}}],
    }


def save_body(username: str, rapid=(), deep=(), convergence=(), task=TASK, stage="快速发散") -> dict:
    """Return a /paint/save body in the client's shape."""
    return {
        "username": username,
        "data": {
            "designSchemes": {
                "准备": None,
                "快速发散": list(rapid),
                "深入发散": list(deep),
                "收敛": list(convergence),
                "完成": None,
                "禁止": None,
            },
            "designTask": task,
            "currentStage": stage,
        },
    }


def body(type_: int, prompts: dict[str, Any], username: str | None = "alice", appid: Any = 0) -> dict[str, Any]:
    """Return a POST /generate body (without username when it is None)."""
    sent = {"appid": appid, "type": type_, "prompts": prompts}
    if username is not None:
        sent["username"] = username
    return sent


# The client's prompts for each type, as API-CONTRACT.md shows them.
PROMPTS: dict[int, dict[str, Any]] = {
    0: {"task": TASK, "num": 6},
    1: {"designTask": TASK, "designTexts": ["可折叠", "带计数"], "designImage": SKETCH, "schemeId": 2},
    2: {"designTask": TASK, "selectNum": 2,
        "schemes": [{"designTexts": ["可折叠"], "designImage": SKETCH},
                    {"designTexts": ["带计数"], "designImage": SKETCH},
                    {"designTexts": ["发光"], "designImage": SKETCH}]},
    3: {"selectedSchemes": [{"designTexts": ["可折叠", "带计数"]}], "num": 3},
}
RAPID_TWO = {"task": TASK, "num": 2}  # a cheap type 0 request: two cards


def post_generate(client: FlaskClient, type_: int = 0, prompts: dict[str, Any] | None = None,
                  username: str = "alice") -> tuple[int, dict[str, Any]]:
    """POST /generate (RAPID_TWO unless other prompts are given) and return (HTTP status, envelope)."""
    response = client.post("/generate", json=body(type_, RAPID_TWO if prompts is None else prompts, username))
    return response.status_code, response.get_json()


def small_payload(prompt: str = "a folding chair", **fields: Any) -> dict[str, Any]:
    """Return a cheap txt2img payload (a tiny image, few steps)."""
    return {"prompt": prompt, "width": 16, "height": 8, "steps": 2, **fields}


# -- the simulated backends ---------------------------------------------------------------
SIM_KEY = "sim-key-5f2c9a"  # the chat simulator's key; no answer or metric may show it
API_VERSION = "2024-10-21"


@dataclass
class Sims:
    """The simulated backends of one test: a chat simulator and three WebUI simulators."""

    chat: ChatSimulator
    sds: list[SDWebUISimulator]


def backend_settings(sims: Sims, **extra: Any) -> dict[str, Any]:
    """Return app settings pointing at `sims`, with test-sized timeouts and retries."""
    return {
        "AZURE_OPENAI_ENDPOINT": sims.chat.url,
        "AZURE_OPENAI_API_KEY": SIM_KEY,
        "GPT_TIMEOUT": 10.0,
        "GPT_MAX_RETRIES": 1,
        "SD_ENDPOINTS": [sd.endpoint for sd in sims.sds],
        "SD_CONNECT_TIMEOUT": 1.0,
        "SD_READ_TIMEOUT": 10.0,
        "SD_ACQUIRE_TIMEOUT": 10.0,
        "SD_COOLDOWN": 30.0,
        **extra,
    }


# -- checks of answers and records ----------------------------------------------------------
ITEM_KEYS = {"type", "text", "image", "combinations"}


def decode_png(value: Any) -> bytes:
    """Return the bytes of a raw base64 PNG (no data: prefix), failing the test unless it is a valid PNG."""
    assert isinstance(value, str) and value and not value.startswith("data:")
    data = base64.b64decode(value, validate=True)
    read_png_header(data)  # signature, chunk CRCs and pixel data
    return data


def check_item(item: dict[str, Any], kind: str) -> None:
    """Check one item of a creative: all four keys, and a PNG or a text as its kind says."""
    assert set(item) == ITEM_KEYS and item["type"] == kind
    if kind.endswith("Image"):
        assert item["text"] is None and item["combinations"] is None
        decode_png(item["image"])
    elif kind.endswith("Text"):
        assert item["image"] is None and item["combinations"] is None
        assert isinstance(item["text"], str) and item["text"].strip()


def check_rapid(answer: dict[str, Any], count: int) -> None:
    """Check a successful type 0 answer: `count` cards, each with a real PNG and a text."""
    assert answer["success"] is True and answer["code"] == 0, answer
    assert answer["data"]["count"] == len(answer["data"]["result"]) == count
    for creative in answer["data"]["result"]:
        image, text = creative["items"]
        check_item(image, "abstractImage")
        check_item(text, "abstractText")


def all_records(db: Database) -> list[dict[str, Any]]:
    """Return the generation records of `db`, oldest first."""
    return list(db[COLLECTION].find({}).sort("createdAt", 1))


def image_steps(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the image step entries of a record."""
    return [step for step in record["steps"] if step["kind"] == "image"]


# -- waiting ----------------------------------------------------------------------------
def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
               every: float = 0.002) -> Any:
    """Poll `condition` every `every` seconds until it is truthy and return its value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Worker(threading.Thread):
    """A thread that runs `target` and keeps its result or exception for the test to check."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._target_call = target
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._target_call()
        except BaseException as e:  # noqa: BLE001  (handed to the test)
            self.error = e

    def outcome(self, timeout: float = 10.0) -> Any:
        """Join and return the result, or raise what the thread raised."""
        self.join(timeout)
        assert not self.is_alive(), "worker still running"
        if self.error is not None:
            raise self.error
        return self.result


# -- the server as a process ------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"]
DEV_SERVER = [sys.executable, "app.py"]


def server_env(**settings: str) -> dict[str, str]:
    """Return the environment of a server process: `settings`, and every other setting at its default."""
    # Every setting the server reads is set (empty means its default), so neither the caller's
    # environment nor a .env file can change what the test runs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUNICORN_")}
    env.update({name: "" for name in from_env({})})
    env["WEB_CONCURRENCY"] = "1"  # gunicorn reads it itself, with int(), before its config file: "" stops it
    env.update(settings)
    return env


class ServerProcess:
    """A server run as a subprocess from the project directory, its stdout and stderr collected line by line."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.out: list[str] = []
        self.err: list[str] = []
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, encoding="utf-8")
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def said(self, text: str) -> bool:
        """Return whether any line on stderr so far contains `text`."""
        return any(text in line for line in list(self.err))

    def output(self) -> str:
        """Return everything written so far, stdout then stderr."""
        return "".join(self.out) + "".join(self.err)

    def close(self) -> None:
        """Kill the server if it still runs and collect its output."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for reader in self._readers:
            reader.join(10)
        self.process.stdout.close()
        self.process.stderr.close()


def answers_ping(base: str) -> bool:
    """Return whether the server at `base` answers /ping yet."""
    try:
        return requests.get(base + "/ping", timeout=1).text == "pong"
    except requests.RequestException:  # not listening yet, or the worker is still booting
        return False
