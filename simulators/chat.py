"""A test double of Azure OpenAI / OpenAI chat completions: a real HTTP server, no model.

Routes (anything else is 404):
- Azure: `POST /openai/deployments/{deployment}/chat/completions?api-version=...` with the
  `api-key` header; a missing api-version is 400, as on Azure.
- OpenAI: `POST /v1/chat/completions` with `Authorization: Bearer <key>`; the body names the model.
A wrong or missing key is 401; a malformed body or an image part that is not base64 is 400.
Errors carry an OpenAI-style body `{"error": {"message", "type", "code"}}`.

The answer contract (what our prompt templates follow). "The prompt" is the text of the last
user message (its text parts joined by newlines):
- The number of items asked for is written as `共 N 项`; the last occurrence wins; absent means 1.
- A line `候选：A#B#C` (`:` or `：`, `#` or `＃`) makes the items a pick of those candidates:
  fixed by the prompt's hash, no repeats, at most as many as there are candidates.
- Otherwise items are short fake Chinese phrases derived from the prompt's hash and the item
  index, or English comma-separated keywords when the prompt contains `英文` or `English`.
  Items of one answer always differ.
- Items are joined by `#`: no numbering, no trailing separator.
- Items are as long as the prompt asks: its first `A 到 B 字` / `A 到 B 个汉字` / `不超过 N 个字`
  (longer bounds give clauses joined by `，`; with `至少 N 个` and `顿号`, N or more features
  joined by `、`); an English answer has as many keywords as the first `A 到 B 个` asks (A).
- A body with `response_format` `{"type": "json_schema", ...}` is answered with JSON of that
  schema: the same items fill its string properties in order, an `enum` property takes a
  distinct value of its enum. On Azure, an api-version before `schemas_from` answers 400 as
  Azure does; so does, on either route, a deployment or model named in `no_schema` (one that
  predates structured outputs); a strict schema that is not strict-valid (`additionalProperties: false` and every
  property required, on every object) is a 400 `Invalid schema` on both routes.
- An answer longer than the body's `max_tokens` (about two characters a token, like its usage)
  is cut there, with finish_reason `length`.
Every answer depends on the prompt text alone, so the same prompt always gets the same answer,
except in realistic mode (`realistic=Realistic(seed)`, off by default), which decorates or
spoils some answers the way real models do, at the rates and in the kinds `Realistic` lists:
fixed by the seed, the prompt and how often it was asked, and recorded as `ChatRecord.deviation`.

`requests` records every request to a chat route (with the status answered, before the
client gets it); `calls` counts every POST. Valid requests pass the fault switches in order: `fail_next` (answer an error
status with `Retry-After` and `retry-after-ms`, which the SDK honours), `hang_next` (hold
until `release()`, `fail_held()`, `hang_timeout` or `stop()`), `filter_next` (Azure's 400
`content_filter`), the latency, and `short_next` / `messy` / `queue` / `script` (which change the
answer). `release(n)` lets the `n` oldest held calls go; `fail_held(text)` answers an error to the held call whose prompt contains
`text`, so a test picks which of several calls in flight fails. `script` (a `Scripted`, or
None) answers every later call with that message exactly, its `finish_reason` and `refusal`
included: a recorded model answer replayed through the real client; `queue(*messages)` answers
the next calls with those messages, one each (None: as usual), before `script` or the generated
answers. Run standalone with
`python -m simulators.chat --port 8001 --latency 0.15 --api-key sim-key`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from simulators.http import Listener, Reply, Request, command_line, serve, serve_until_stopped

AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions/?$")
OPENAI_PATH = "/v1/chat/completions"
DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,(.*)$", re.DOTALL)

# Error bodies per injected status: (type, code, message).
_FAULTS = {
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached (simulated); retry later."),
    500: ("server_error", "internal_error", "The server had an error (simulated)."),
    503: ("server_error", "service_unavailable", "The service is overloaded (simulated)."),
}


@dataclass(frozen=True)
class ChatRecord:
    """One request to a chat route, with the status the simulator answered."""

    route: str  # "azure" or "openai"
    deployment: str  # the Azure deployment, or the OpenAI model ("" when unknown)
    api_version: str | None
    text: str  # every text part of every message, joined by newlines
    prompt: str  # the text of the last user message
    images: int
    status: int
    schema: str | None = None  # the name of the json_schema asked for, if one was
    deviation: str | None = None  # realistic mode: the `DEVIATIONS` kind answered ("clean" when none)


@dataclass(frozen=True)
class Scripted:
    """A whole assistant message to answer with, as a real model might have sent it."""

    content: str | None
    finish_reason: str = "stop"  # "length", "content_filter", ...
    refusal: str | None = None


@dataclass
class _Hold:
    """One call held by `hang_next`, and how it is to go on."""

    prompt: str
    released: bool = False
    status: int | None = None  # answer this error status instead (`fail_held`)


class BadRequest(ValueError):
    """The request body is not a valid chat-completions request."""


class ChatSimulator:
    """A chat-completions server for tests, benchmarks and the offline demo (never a real study).

    It keeps `requests` (a `ChatRecord` per request to a chat route), `calls`, `in_flight`,
    `peak_in_flight` and `held`; `latency`, `messy`, `realistic`, `script`, `schemas_from`, `no_schema` and the
    methods below steer it. Everything is guarded by one condition variable, so tests may flip
    switches from any thread while handler threads read them.
    """

    def __init__(self, api_key: str = "sim-key", latency: float = 0.0, host: str = "127.0.0.1",
                 port: int = 0, hang_timeout: float = 30.0, realistic: Realistic | None = None) -> None:
        self.api_key = api_key
        self.latency = latency
        self.messy = False
        self.realistic = realistic  # answer like a real model at `Realistic` rates (None: clean answers)
        self._asked: dict[int, int] = {}  # prompt digest -> how often it was answered (`realistic` rolls)
        self.script: Scripted | None = None
        self._queued: list[Scripted | None] = []  # `queue`: messages for the next calls, before `script`
        self.schemas_from = SCHEMAS_FROM  # the first Azure api-version that takes a json_schema
        self.no_schema: set[str] = set()  # deployments (or OpenAI models) that refuse json_schema
        self.hang_timeout = hang_timeout
        self.requests: list[ChatRecord] = []
        self.calls = 0  # every POST, valid or not
        self.in_flight = 0
        self.peak_in_flight = 0
        self._address = (host, port)
        self._listener: Listener | None = None
        self._lock = threading.Condition()
        self._fail: tuple[int, int, float | None] = (0, 0, None)  # (count, status, retry_after)
        self._credits = {"short": 0, "filter": 0}  # answers left to shorten / to filter
        self._hang = 0
        self._holds: list[_Hold] = []  # held calls, oldest first
        self._stopping = threading.Event()

    # -- serving -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Return the base URL, e.g. `http://127.0.0.1:54321` (no trailing slash)."""
        assert self._listener is not None, "start() the simulator first"
        return self._listener.url

    def start(self) -> ChatSimulator:
        """Start serving on background threads and return self."""
        self._stopping.clear()
        self._listener = serve(self.route, "ChatSimulator/1", *self._address, keep_alive=True)
        return self

    def stop(self) -> None:
        """Let held and sleeping calls go, stop accepting and join every server thread."""
        if self._listener is None:
            return
        self._stopping.set()
        with self._lock:
            self._hang = 0
            self._lock.notify_all()
        self._listener.close()
        self._listener.join()
        self._listener = None

    def __enter__(self) -> ChatSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def held(self) -> int:
        """How many calls `hang_next` holds right now (and no release or `fail_held` let go yet)."""
        with self._lock:
            return sum(not hold.released for hold in self._holds)

    # -- faults ------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 429, retry_after: float | None = None) -> None:
        """Answer the next `n` valid calls with `status` (and Retry-After headers when given)."""
        with self._lock:
            self._fail = (n, status, retry_after)

    def short_next(self, n: int) -> None:
        """Answer the next `n` valid calls with one item fewer than asked (1 asked: empty)."""
        with self._lock:
            self._credits["short"] = n

    def filter_next(self, n: int) -> None:
        """Answer the next `n` valid calls with Azure's 400 `content_filter` error (violence filtered)."""
        with self._lock:
            self._credits["filter"] = n

    def hang_next(self, n: int) -> None:
        """Hold the next `n` valid calls until `release()`, `hang_timeout` or `stop()`."""
        with self._lock:
            self._hang = n

    def release(self, n: int | None = None) -> None:
        """Let the `n` oldest held calls go on (None: all held calls, and cancel pending hangs)."""
        with self._lock:
            if n is None:
                self._hang = 0
            # Only calls held now: no release is left over for a later hang.
            waiting = [hold for hold in self._holds if not hold.released]
            for hold in waiting if n is None else waiting[:n]:
                hold.released = True
            self._lock.notify_all()

    def fail_held(self, text: str, status: int = 500) -> None:
        """Answer `status` to the held call whose prompt contains `text` (LookupError if none is held)."""
        with self._lock:
            hold = next((h for h in self._holds if not h.released and text in h.prompt), None)
            if hold is None:
                raise LookupError(f"no held call's prompt contains {text!r}")
            hold.released, hold.status = True, status
            self._lock.notify_all()

    # -- the API -----------------------------------------------------------------------
    def route(self, request: Request) -> Reply:
        """Answer one request, counting a POST in flight until its answer is decided."""
        if request.method != "POST":
            return _error(404, "invalid_request_error", "not_found", "Resource not found.")
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        info: dict[str, Any] = {"route": "", "deployment": "", "api_version": None,
                                "text": "", "prompt": "", "images": 0, "schema": None, "deviation": None}
        status = 500  # recorded when answering fails
        try:
            reply = self._answer(request, info)
            status = reply.status
            return reply
        finally:
            # Recorded before the reply is written, so the client never sees an answer
            # that `requests` and `in_flight` do not show yet.
            with self._lock:
                self.in_flight -= 1
                if info["route"]:
                    self.requests.append(ChatRecord(status=status, **info))

    def _answer(self, request: Request, info: dict[str, Any]) -> Reply:
        """Validate, apply the fault switches and answer, filling `info` on the way."""
        refused = self._check_route_and_key(request, info)
        if refused is not None:
            return refused
        try:
            body = json.loads(request.body)
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            info["deployment"] = info["deployment"] or body.get("model") or ""
            if not info["deployment"]:
                raise BadRequest("model is required")
            info["text"], info["prompt"], info["images"] = summarize(body.get("messages"))
            schema = requested_schema(body.get("response_format"))
            info["schema"] = schema["name"] if schema is not None else None
        except ValueError as e:  # json.JSONDecodeError and BadRequest
            return _error(400, "invalid_request_error", "bad_request", f"Invalid request: {e}")
        if schema is not None:
            refused = self._refuse_schema(info, schema)
            if refused is not None:
                return refused
        fault = self._take_fault()
        if fault is None:
            fault = self._hold_if_asked(info["prompt"])
        if fault is not None:
            status, retry_after = fault
            kind, code, message = _FAULTS.get(status, ("server_error", str(status), "Simulated failure."))
            return _error(status, kind, code, message, retry_after)
        if self._take("filter"):
            return _content_filtered()
        if self.latency > 0:
            self._stopping.wait(self.latency)  # stop() cuts the wait short
        short, messy, script = self._take_answer_style()
        if script is not None:
            return _reply(200, completion(info["deployment"], script.content, info["text"],
                                          finish_reason=script.finish_reason, refusal=script.refusal))
        rolled = None if short or messy else self._roll(info["prompt"])
        if rolled is not None:
            content, finish_reason, info["deviation"] = realistic_answer(info["prompt"], schema, *rolled)
        elif schema is not None:
            content = answer_json(info["prompt"], schema, short=short, messy_style=messy)
        else:
            content = answer_text(info["prompt"], short=short, messy_style=messy)
        if rolled is None or finish_reason == "stop":
            content, finish_reason = within_budget(content, body.get("max_tokens"))
        return _reply(200, completion(info["deployment"], content, info["text"], finish_reason=finish_reason))

    def _roll(self, prompt: str) -> tuple[Realistic, random.Random] | None:
        """Return the realistic setting and the random source of this answer (None when the mode is off).

        One `random.Random` per answer, seeded by the seed, the prompt and how often that prompt
        was answered before: the same seed gives the same answers however concurrent calls interleave.
        """
        with self._lock:
            setting = self.realistic
            if setting is None:
                return None
            key = _digest(prompt, str(setting.seed))
            seen = self._asked[key] = self._asked.get(key, 0) + 1
        return setting, random.Random(f"{setting.seed}/{key}/{seen}")

    def _refuse_schema(self, info: dict[str, Any], schema: dict[str, Any]) -> Reply | None:
        """Return the 400 a json_schema request gets from this deployment and api-version, or None."""
        version = info["api_version"]
        if info["route"] == "azure" and version and version[:10] < self.schemas_from[:10]:
            return _error(400, "", "BadRequest", f"response_format value as json_schema is enabled only for "
                          f"api versions {self.schemas_from} and later", param="")
        if info["deployment"] in self.no_schema:
            return _error(400, "invalid_request_error", None, "Invalid parameter: 'response_format' of type "
                          "'json_schema' is not supported with this model (simulated).", param="response_format")
        problem = strict_problem(schema.get("schema"))
        if schema.get("strict") and problem:
            return _error(400, "invalid_request_error", None, f"Invalid schema for response_format "
                          f"'{schema.get('name')}': {problem}", param="response_format")
        return None

    def _take(self, name: str) -> bool:
        """Consume one `name` credit ("short" or "filter"); say whether there was one."""
        with self._lock:
            if self._credits[name] <= 0:
                return False
            self._credits[name] -= 1
            return True

    def _check_route_and_key(self, request: Request, info: dict[str, Any]) -> Reply | None:
        """Return the 404, 401 or 400 (no api-version on Azure) to answer; None when all is well."""
        azure = AZURE_PATH.match(request.path)
        if azure:
            info.update(route="azure", deployment=unquote(azure[1]),
                        api_version=(request.query.get("api-version") or [None])[0])
            authorised = request.headers.get("api-key") == self.api_key
        elif request.path.rstrip("/") == OPENAI_PATH:
            info["route"] = "openai"
            authorised = request.headers.get("Authorization") == f"Bearer {self.api_key}"
        else:
            return _error(404, "invalid_request_error", "not_found", "Resource not found.")
        if not authorised:
            return _error(401, "invalid_request_error", "invalid_api_key", _refusal(request, bool(azure)))
        if azure and not info["api_version"]:
            return _error(400, "invalid_request_error", "missing_api_version",
                          "The api-version query parameter is required.")
        return None

    def _take_fault(self) -> tuple[int, float | None] | None:
        """Consume one `fail_next` credit: return (status, retry_after), or None."""
        with self._lock:
            count, status, retry_after = self._fail
            if count <= 0:
                return None
            self._fail = (count - 1, status, retry_after)
            return status, retry_after

    def queue(self, *messages: Scripted | None) -> None:
        """Answer the next calls with `messages`, one each in order (None: as usual), then as before."""
        with self._lock:
            self._queued.extend(messages)

    def _take_answer_style(self) -> tuple[bool, bool, Scripted | None]:
        """Return (short, messy, script) for this answer, consuming one `short_next` credit or queued message."""
        short = self._take("short")
        with self._lock:
            queued = self._queued.pop(0) if self._queued else None
            return short, self.messy, queued or self.script

    def _hold_if_asked(self, prompt: str) -> tuple[int, float | None] | None:
        """Block while this call is held by `hang_next`; return (status, None) when `fail_held` failed it."""
        with self._lock:
            if self._hang <= 0:
                return None
            self._hang -= 1
            hold = _Hold(prompt)
            self._holds.append(hold)
            try:
                self._lock.wait_for(lambda: hold.released or self._stopping.is_set(), timeout=self.hang_timeout)
            finally:
                self._holds.remove(hold)
            return None if hold.status is None else (hold.status, None)


# -- answers on the wire ---------------------------------------------------------------
def _refusal(request: Request, azure: bool) -> str:
    """Word a 401 like the real services: OpenAI echoes the key's ends, masked."""
    if azure:
        return "Access denied: invalid subscription key or wrong API endpoint."
    given = (request.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
    shown = f"{given[:3]}****{given[-4:]}" if len(given) > 8 else "****"
    return f"Incorrect API key provided: {shown}."


def _error(status: int, kind: str, code: str | None, message: str, retry_after: float | None = None,
           **more: Any) -> Reply:
    """Return an OpenAI-style error reply (with `more` error fields), and the retry headers the SDK honours."""
    headers = {}
    if retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after))),
                   "retry-after-ms": str(max(1, round(retry_after * 1000)))}
    return _reply(status, {"error": {"message": message, "type": kind, "code": code, **more}}, headers)


def _content_filtered() -> Reply:
    """Return Azure's 400 for a prompt its content filter blocked, naming the category (violence)."""
    verdicts = {name: {"filtered": False, "severity": "safe"} for name in ("hate", "self_harm", "sexual")}
    verdicts["violence"] = {"filtered": True, "severity": "medium"}
    return _reply(400, {"error": {
        "message": "The prompt was filtered by the content management policy (simulated); modify the prompt and "
                   "retry.", "type": None, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": verdicts}}})


def _reply(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    """Return `body` with the request id every answer of the service carries."""
    return Reply(status, body, {"x-request-id": uuid.uuid4().hex, **(headers or {})})


# -- reading requests and shaping completions ------------------------------------------
def _text_and_images(content: Any) -> tuple[list[str], int]:
    """Return the text parts and the number of image parts of one message's content."""
    if isinstance(content, str):
        return [content], 0
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or a list of parts")
    texts, images = [], 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            _check_image((part.get("image_url") or {}).get("url"))
            images += 1
        else:
            raise BadRequest(f"unsupported content part: {kind!r}")
    return texts, images


def _check_image(url: Any) -> None:
    """Reject an image part that is not a base64 data URI."""
    match = DATA_URI.match(url) if isinstance(url, str) else None
    try:
        if match is None or not base64.b64decode(match[1], validate=True):
            raise BadRequest("image_url.url must be a non-empty base64 data URI")
    except binascii.Error:
        raise BadRequest("image_url.url is not valid base64") from None


def summarize(messages: Any) -> tuple[str, str, int]:
    """Return (all text, last user message text, image count) of `messages`."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    all_texts, prompt, images = [], "", 0
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("each message needs a role")
        texts, count = _text_and_images(message.get("content"))
        all_texts += texts
        images += count
        if message["role"] == "user":
            prompt = "\n".join(texts)
    return "\n".join(all_texts), prompt, images


def completion(model: str, content: str | None, prompt_text: str, *, finish_reason: str = "stop",
               refusal: str | None = None) -> dict[str, Any]:
    """Return a complete ChatCompletion body answering `content` (None: no content, as with a refusal)."""
    prompt_tokens = len(prompt_text) // 2 + 1
    completion_tokens = len(content or refusal or "") // 2 + 1
    return {
        "id": f"chatcmpl-sim-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": refusal},
                     "finish_reason": finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


# -- the answers: deterministic, from the prompt text alone ----------------------------
COUNT_RE = re.compile(r"共\s*(\d+)\s*项")
CANDIDATES_RE = re.compile(r"^[ \t]*候选[:：][ \t]*(.*)$", re.MULTILINE)
SEPARATORS_RE = re.compile(r"[#＃]")
RANGE_RE = re.compile(r"(\d+)\s*到\s*(\d+)\s*个?汉?字")
AT_MOST_RE = re.compile(r"不超过\s*(\d+)\s*个?字")
KEYWORDS_RE = re.compile(r"(\d+)\s*到\s*(\d+)\s*个(?![汉字])")
FEATURES_RE = re.compile(r"至少\s*(\d+)\s*个")
NAME_MOST = 12  # longer items are clauses, not names
SCHEMAS_FROM = "2024-08-01-preview"  # Azure's first api-version with json_schema

# Small built-in vocabularies: enough combinations that a few dozen items never repeat.
_ZH_QUALITIES = ["可折叠", "轻便", "智能", "防水", "便携", "模块化", "自清洁", "低噪",
                 "节能", "可调节", "柔性", "发光", "抗菌", "磁吸", "无线", "耐磨"]
_ZH_THINGS = ["水杯", "护膝", "背包", "跳绳", "头盔", "手环", "座椅", "台灯",
              "雨伞", "跑鞋", "计时器", "收纳盒", "拉力带", "瑜伽垫", "水壶", "护腕"]
_EN_WORDS = ["folding frame", "city park", "morning light", "minimal", "soft shadows",
             "matte plastic", "wooden table", "sports field", "close-up", "clean lines",
             "aluminium body", "blue hour", "studio light", "kitchen counter", "river bank",
             "wide angle", "pastel colours", "rubber grip", "glass surface", "mountain trail"]
_ZH_CLAUSES = ["清晨的城市公园里", "借助弹性形变储存能量", "在狭小的出租屋客厅", "通过磁吸结构快速固定",
               "下班后的地铁站台旁", "把重复动作变成看得见的进度", "利用重心变化自动调节", "周末午后的社区球场",
               "用分段反馈降低上手难度", "雨后湿滑的跑道边", "靠声音提示保持节奏", "夜晚灯光昏暗的楼道",
               "让身体的力量就地循环利用", "办公室午休的片刻", "以软材料贴合不同体型", "窗边洒满阳光的书房"]
_ZH_FEATURES = ["铝合金框架", "三段折叠", "防滑硅胶底", "磁吸快拆", "高度可调", "USB-C充电", "透气网布",
                "隐藏式收纳", "LED状态灯", "抗菌涂层", "一键锁止", "静音轴承", "可拆洗外套", "碳纤维杆",
                "触控面板", "防水密封圈"]
_CIRCLED = "①②③④⑤⑥⑦⑧⑨⑩"


def _digest(text: str, salt: str = "") -> int:
    """Return a stable integer hash of `text` and `salt`."""
    return int.from_bytes(hashlib.sha256(f"{salt}\x00{text}".encode()).digest()[:8], "big")


def requested_count(prompt: str) -> int:
    """Return how many items the prompt asks for: the last `共 N 项`, else 1."""
    found = COUNT_RE.findall(prompt)
    return int(found[-1]) if found else 1


def candidates(prompt: str) -> list[str] | None:
    """Return the distinct candidates of the prompt's `候选：A#B` line, or None without one."""
    lines = CANDIDATES_RE.findall(prompt)
    if not lines:
        return None
    items = [part.strip() for part in SEPARATORS_RE.split(lines[-1])]
    return list(dict.fromkeys(item for item in items if item))


def wants_english(prompt: str) -> bool:
    """Tell whether the prompt asks for English keywords."""
    return "英文" in prompt or "english" in prompt.lower()


def _pick(prompt: str, pool: list[str], count: int) -> list[str]:
    """Pick `count` distinct items of `pool` in an order fixed by the prompt's hash."""
    return sorted(pool, key=lambda item: _digest(prompt, item))[:count]


@dataclass(frozen=True)
class _Ask:
    """What the prompt asks each item to be: English keywords, a name, clauses or features, and how long."""

    english: bool
    fewest: int  # characters (keywords when English)
    most: int
    features: int  # at least this many features joined by 、 (0: not a feature list)

    @classmethod
    def of(cls, prompt: str) -> _Ask:
        if wants_english(prompt):
            keywords = KEYWORDS_RE.search(prompt)
            return cls(True, int(keywords[1]) if keywords else 4, 0, 0)
        span, at_most = RANGE_RE.search(prompt), AT_MOST_RE.search(prompt)
        fewest, most = (int(span[1]), int(span[2])) if span else (0, int(at_most[1]) if at_most else NAME_MOST)
        features = FEATURES_RE.search(prompt) if "顿号" in prompt else None
        if most > NAME_MOST and not span:
            fewest = most // 2
        return cls(False, fewest, most, int(features[1]) if features else 0)


def _joined(seed: int, pool: list[str], joiner: str, ask: _Ask, parts: int) -> str:
    """Join `pool` phrases in `seed`'s order until `parts` of them and `ask.fewest` characters; cut at `ask.most`."""
    text, used = "", 0
    for phrase in _pick(str(seed), pool, len(pool)):
        if used >= parts and len(text) >= ask.fewest:
            break
        candidate = f"{text}{joiner}{phrase}" if text else phrase
        if len(candidate) > ask.most and used >= parts:
            break
        text, used = candidate, used + 1
    return text[:ask.most].rstrip(joiner)


def _fake_item(prompt: str, index: int, attempt: int, ask: _Ask) -> str:
    """Return one fake item for position `index` (another one for each `attempt`)."""
    seed = _digest(prompt, f"{index}/{attempt}")
    if ask.english:
        return ", ".join(_pick(str(seed), _EN_WORDS, ask.fewest))
    if ask.features:
        return _joined(seed, _ZH_FEATURES, "、", ask, ask.features)
    if ask.most > NAME_MOST:
        return _joined(seed, _ZH_CLAUSES, "，", ask, 1)
    name = _ZH_QUALITIES[seed % len(_ZH_QUALITIES)] + _ZH_THINGS[(seed // 97) % len(_ZH_THINGS)]
    while len(name) < ask.fewest:  # a longer name: one more quality in front
        seed //= 7
        name = _ZH_QUALITIES[seed % len(_ZH_QUALITIES)] + name
    return name[-ask.most:]


def answer_items(prompt: str, count: int | None = None) -> list[str]:
    """Return the items answering `prompt`: `count` of them (default: as many as asked)."""
    count = requested_count(prompt) if count is None else count
    pool = candidates(prompt)
    if pool is not None:
        return _pick(prompt, pool, min(count, len(pool)))
    ask, items = _Ask.of(prompt), []
    for index in range(count):
        for attempt in range(20):
            item = _fake_item(prompt, index, attempt, ask)
            if item not in items:
                break
        else:  # vocabulary exhausted: make it unique by its position
            item = f"{item} {index + 1}"
        items.append(item)
    return items


_STYLES = [
    lambda i, s: f"{i + 1}. {s}",
    lambda i, s: f"{_CIRCLED[i % len(_CIRCLED)]}{s}",
    lambda i, s: f"- {s}",
    lambda i, s: f"“{s}”",
    lambda i, s: f' "{s}" ',
    lambda i, s: f"• {s}",
]


def decorate(index: int, item: str) -> str:
    """Return item `index` the way a chatty model writes it: numbered, bulleted or quoted."""
    return _STYLES[index % len(_STYLES)](index, item)


def messy(items: list[str]) -> str:
    """Join `items` the way a chatty model would: numbering, bullets, quotes, blanks, mixed `#`."""
    parts = [decorate(i, item) for i, item in enumerate(items)]
    if parts:
        parts.insert(1, "  ")  # a blank item between the first two
    text = ""
    for i, part in enumerate(parts):
        text += part + ("＃" if i % 2 else "#")
    return text  # ends with a separator on purpose


def answer_text(prompt: str, *, short: bool = False, messy_style: bool = False) -> str:
    """Return the `#`-joined answer to `prompt`, one item short or decorated when asked."""
    count = requested_count(prompt)
    items = answer_items(prompt, max(count - 1, 0) if short else count)
    return messy(items) if messy_style else "#".join(items)


# -- structured outputs -------------------------------------------------------------------
def requested_schema(response_format: Any) -> dict[str, Any] | None:
    """Return the `json_schema` object of a json_schema response_format (None for text or none)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise BadRequest("response_format must be an object with a type")
    if response_format["type"] != "json_schema":
        return None
    schema = response_format.get("json_schema")
    if not isinstance(schema, dict) or not isinstance(schema.get("schema"), dict) or not schema.get("name"):
        raise BadRequest("response_format.json_schema needs a name and a schema")
    return schema


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` (`#/$defs/Name`) to the node it names."""
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def strict_problem(schema: Any, root: dict[str, Any] | None = None, where: str = "()") -> str | None:
    """Return why `schema` breaks strict mode's rules for objects, or None when it keeps them."""
    if not isinstance(schema, dict):
        return f"In context={where}, a schema must be an object"
    root = schema if root is None else root
    node = _resolve(schema, root)
    if node.get("type") == "object":
        if node.get("additionalProperties") is not False:
            return f"In context={where}, 'additionalProperties' is required to be supplied and to be false"
        properties = node.get("properties") or {}
        if set(node.get("required") or ()) != set(properties):
            return f"In context={where}, 'required' is required to be supplied and to list every property"
        children = [(name, child) for name, child in properties.items()]
    else:
        children = [("items", node["items"])] if "items" in node else []
        children += [(f"anyOf[{i}]", child) for i, child in enumerate(node.get("anyOf") or ())]
    for name, child in children:
        problem = strict_problem(child, root, f"{where}.{name}")
        if problem:
            return problem
    return None


def _slots(node: dict[str, Any], root: dict[str, Any], path: tuple[Any, ...] = ()) -> list[tuple[tuple, Any]]:
    """Return (path, leaf schema) of every leaf of `node` in property order."""
    node = _resolve(node, root)
    if node.get("type") == "object":
        return [slot for name, child in (node.get("properties") or {}).items()
                for slot in _slots(child, root, (*path, name))]
    if "anyOf" in node:  # a nullable value: answer the branch that is not null
        branch = next((b for b in node["anyOf"] if _resolve(b, root).get("type") != "null"), node["anyOf"][0])
        return _slots(branch, root, path)
    return [(path, node)]


def _put(target: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    for name in path[:-1]:
        target = target.setdefault(name, {})
    target[path[-1]] = value


def answer_json(prompt: str, schema: dict[str, Any], *, short: bool = False, messy_style: bool = False,
                change: Callable[[list[str]], list[str]] | None = None) -> str:
    """Return JSON of `schema` answering `prompt`: its items in the string leaves, distinct enum values."""
    root = schema["schema"]
    slots = _slots(root, root)
    texts = [i for i, (_, leaf) in enumerate(slots) if leaf.get("type") == "string" and "enum" not in leaf]
    items = answer_items(prompt, len(texts))
    if short and items:
        items[-1] = ""  # strict mode cannot leave a key out: a model with one idea too few leaves it blank
    if messy_style:
        items = [decorate(i, item) if item else item for i, item in enumerate(items)]
    if change is not None:  # realistic mode: the same number of strings, other contents
        items = change(items)
    filled = dict(zip(texts, items, strict=True))
    answer: dict[str, Any] = {}
    for index, (path, leaf) in enumerate(slots):
        if index in filled:
            value: Any = filled[index]
        elif "enum" in leaf:
            picks = _pick(prompt, list(leaf["enum"]), len(leaf["enum"]))
            value = picks[sum("enum" in slot for _, slot in slots[:index]) % len(picks)]
        else:
            value = {"boolean": True, "integer": 1, "number": 1}.get(leaf.get("type"), "")
        _put(answer, path, value)
    return json.dumps(answer, ensure_ascii=False)


# -- realistic mode -----------------------------------------------------------------------
@dataclass(frozen=True)
class Realistic:
    """Answer like a real model (`ChatSimulator(realistic=Realistic(seed=7))`, `python app.py --demo --messy`).

    Of the answers the simulator generates (not `script`, `queue`, `short_next` or `messy` ones),
    a share `failing` must fail the step's checks and a share `decorated` deviates from the
    asked format the way a careful reader sees through; the rest are as asked. The defaults
    are our estimate for a GPT-4o-class model on our Chinese templates: about a third of its
    answers decorate the list (the corpus in tests/corpus holds more, being chosen for them),
    and a few in a hundred repeat an item, stop an item short, answer a keyword line in
    Chinese or run out of tokens. Each deviation kind is equally likely within its group.
    """

    seed: int = 0
    decorated: float = 0.35
    failing: float = 0.04


# Deviations by protocol, each with what it does. Text decorations change how the list is written:
TEXT_DECORATIONS = {
    "preamble": "a line announcing the list (好的，以下是N个…：), on its own line or glued to item 1",
    "numbered": "one item per line, numbered 1. or 1、 or （1）",
    "bold_label": "one item per line behind a bold label (**创意1**：, **Prompt 1:**)",
    "header": "each item under a markdown header (### 创意1)",
    "lines": "one item per line instead of #",
    "closing": "a closing remark after the list",
    "fence": "the #-list in a code fence",
    "json": "a JSON array of the items, fenced or not",
}
# Structured decorations keep valid JSON of the schema but spoil what the strings hold:
JSON_DECORATIONS = {
    "label": "one item behind a label (方案2：)",
    "explanation": "a name, keyword line or sentence followed by an explanation in brackets",
    "numbered": "every item numbered (1. )",
    "bold": "one item in markdown bold",
    "too_long": "one item three times as long as asked",
}
# Failures, in both protocols: answers that must fail their checks (asked again, they may pass).
FAILURES = {
    "duplicates": "the last item repeats the first",
    "too_few": "one item short (left blank under a schema)",
    "chinese": "an English keyword line answered in Chinese",
    "cut": "finish_reason length, the last item cut in half",
}

_PREAMBLES = ["好的，以下是{n}个{what}：", "好的，按照要求整理出{n}个{what}：", "好的，这里给出{n}个{what}："]
_CLOSINGS = ["希望这些想法能给你一些启发！", "希望对你的设计有所帮助。", "以上内容仅供参考，如需调整请告诉我。"]
_NUMBERINGS = ["{n}. {item}", "{n}、{item}", "（{n}）{item}"]
_EXPLANATIONS = ["（这样更方便日常使用）", "（兼顾了实用性和趣味性）", "（适合在小空间里使用）"]


def realistic_answer(prompt: str, schema: dict[str, Any] | None, setting: Realistic,
                     rng: random.Random) -> tuple[str, str, str]:
    """Return (content, finish_reason, deviation kind or "clean") of a realistic answer to `prompt`."""
    ask, english = _Ask.of(prompt), wants_english(prompt)
    roll = rng.random()
    if roll < setting.failing:
        kinds = [k for k in FAILURES if k != "chinese" or english]
    elif roll < setting.failing + setting.decorated:
        kinds = list(JSON_DECORATIONS if schema is not None else TEXT_DECORATIONS)
    else:
        kinds = ["clean"]
    kind = rng.choice(kinds)
    if schema is not None:
        content = answer_json(prompt, schema, change=lambda items: _spoiled(kind, items, ask, rng, blank=True))
        if kind == "cut":
            return _cut(content, _leaves(json.loads(content))), "length", kind
        return content, "stop", kind
    items = answer_items(prompt)
    if kind == "cut":
        return _cut("#".join(items), items), "length", kind
    if kind in FAILURES or kind == "clean":
        return "#".join(_spoiled(kind, items, ask, rng)), "stop", kind
    return _decorated_text(kind, items, english, rng), "stop", kind


def _spoiled(kind: str, items: list[str], ask: _Ask, rng: random.Random, *, blank: bool = False) -> list[str]:
    """Return `items` with failure or structured decoration `kind` applied.

    `blank`: a missing item is left blank (a schema's keys are all required), not left out.
    """
    if not items:  # a schema of enums only (the selection): nothing to spoil
        return items
    items, at = list(items), rng.randrange(len(items))
    if kind == "duplicates" and len(items) > 1:
        items[-1] = items[0]
    elif kind in ("too_few", "duplicates"):  # one item cannot repeat: it is left out instead
        items[-1:] = [""] if blank else []
    elif kind == "chinese":
        items[at] = _pick(str(rng.random()), _ZH_CLAUSES, 1)[0] + _pick(str(rng.random()), _ZH_THINGS, 1)[0]
    elif kind == "label":
        items[at] = f"方案{at + 1}：{items[at]}"
    elif kind == "explanation":
        items[at] += rng.choice(_EXPLANATIONS)
    elif kind == "numbered":
        items = [f"{i + 1}. {item}" for i, item in enumerate(items)]
    elif kind == "bold":
        items[at] = f"**{items[at]}**"
    elif kind == "too_long":
        extra, target = _EN_WORDS if ask.english else _ZH_CLAUSES, 3 * len(items[at])
        while len(items[at]) < target:
            items[at] += (", " if ask.english else "，") + rng.choice(extra)
    return items


def _cut(content: str, items: list[Any]) -> str:
    """Return `content` cut in the middle of its last string item (halved when there is none)."""
    strings = [item for item in items if isinstance(item, str) and item]
    last = strings[-1] if strings else ""
    end = content.rfind(last) if last else -1
    return content[:end + max(1, len(last) // 2)] if end >= 0 else content[:len(content) // 2]


def _leaves(value: Any) -> list[Any]:
    """Return the leaves of a parsed JSON value in order."""
    if isinstance(value, dict):
        return [leaf for child in value.values() for leaf in _leaves(child)]
    return [value]


def _decorated_text(kind: str, items: list[str], english: bool, rng: random.Random) -> str:
    """Return `items` written with text decoration `kind`."""
    hashed = "#".join(items)
    if kind == "preamble":
        what = "英文关键词组合" if english else rng.choice(["想法", "创意", "结果"])
        line = rng.choice(_PREAMBLES).format(n=len(items), what=what)
        return line + rng.choice(["\n", "\n\n", ""]) + hashed
    if kind == "numbered":
        style = rng.choice(_NUMBERINGS)
        return "\n".join(style.format(n=i + 1, item=item) for i, item in enumerate(items))
    if kind == "bold_label":
        label = "**Prompt {n}:** " if english else "**创意{n}**："
        return "\n".join(label.format(n=i + 1) + item for i, item in enumerate(items))
    if kind == "header":
        title = "### Prompt {n}" if english else "### 创意{n}"
        return "\n\n".join(f"{title.format(n=i + 1)}\n{item}" for i, item in enumerate(items))
    if kind == "lines":
        return "\n".join(items)
    if kind == "closing":
        return hashed + "\n\n" + rng.choice(_CLOSINGS)
    if kind == "fence":
        return f"```{rng.choice(['', 'text'])}\n{hashed}\n```"
    array = json.dumps(items, ensure_ascii=False, indent=rng.choice([None, 2]))
    return f"```json\n{array}\n```" if rng.random() < 0.5 else array


def within_budget(content: str, max_tokens: Any) -> tuple[str, str]:
    """Return `content` cut to `max_tokens` (about two characters a token) and its finish_reason."""
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and len(content) // 2 + 1 > max_tokens:
        return content[:max(0, max_tokens * 2)], "length"
    return content, "stop"


def main(argv: list[str] | None = None) -> None:
    """Run the simulator in the foreground until interrupted."""
    parser = command_line("Chat-completions simulator (test double).", 8001, "seconds per call")
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--messy", action="store_true", help="decorate answers like a chatty model")
    parser.add_argument("--realistic", type=int, metavar="SEED", help="answer like a real model (see Realistic)")
    args = parser.parse_args(argv)
    realistic = Realistic(seed=args.realistic) if args.realistic is not None else None
    sim = ChatSimulator(api_key=args.api_key, latency=args.latency, host=args.host, port=args.port,
                        realistic=realistic)
    sim.messy = args.messy
    sim.start()
    serve_until_stopped(sim.stop, "chat simulator at %s; point the server at it with AZURE_OPENAI_ENDPOINT=%s "
                        "AZURE_OPENAI_API_KEY=<the --api-key value> (or OPENAI_BASE_URL=%s/v1 "
                        "OPENAI_API_KEY=<the --api-key value>)", sim.url, sim.url, sim.url)

if __name__ == "__main__":
    main()
