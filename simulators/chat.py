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
Every answer depends on the prompt text alone, so the same prompt always gets the same answer.

`requests` records every request to a chat route (with the status answered, before the
client gets it); `calls` counts every POST. Valid requests pass the fault switches in order: `fail_next` (answer an error
status with `Retry-After` and `retry-after-ms`, which the SDK honours), `hang_next` (hold
until `release()`, `fail_held()`, `hang_timeout` or `stop()`), the latency, and
`short_next` / `messy` / `script` (which change the answer). `release(n)` lets the `n` oldest held
calls go; `fail_held(text)` answers an error to the held call whose prompt contains
`text`, so a test picks which of several calls in flight fails. `script` (a `Scripted`, or
None) answers every later call with that message exactly, its `finish_reason` and `refusal`
included: a recorded model answer replayed through the real client. Run standalone with
`python -m simulators.chat --port 8001 --latency 0.15 --api-key sim-key`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import threading
import time
import uuid
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
    `peak_in_flight` and `held`; `latency`, `messy`, `script` and the methods below steer it. Everything
    is guarded by one condition variable, so tests may flip switches from any thread while
    handler threads read them.
    """

    def __init__(self, api_key: str = "sim-key", latency: float = 0.0, host: str = "127.0.0.1",
                 port: int = 0, hang_timeout: float = 30.0) -> None:
        self.api_key = api_key
        self.latency = latency
        self.messy = False
        self.script: Scripted | None = None
        self.hang_timeout = hang_timeout
        self.requests: list[ChatRecord] = []
        self.calls = 0  # every POST, valid or not
        self.in_flight = 0
        self.peak_in_flight = 0
        self._address = (host, port)
        self._listener: Listener | None = None
        self._lock = threading.Condition()
        self._fail: tuple[int, int, float | None] = (0, 0, None)  # (count, status, retry_after)
        self._short = 0
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
            self._short = n

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
                                "text": "", "prompt": "", "images": 0}
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
        except ValueError as e:  # json.JSONDecodeError and BadRequest
            return _error(400, "invalid_request_error", "bad_request", f"Invalid request: {e}")
        fault = self._take_fault()
        if fault is None:
            fault = self._hold_if_asked(info["prompt"])
        if fault is not None:
            status, retry_after = fault
            kind, code, message = _FAULTS.get(status, ("server_error", str(status), "Simulated failure."))
            return _error(status, kind, code, message, retry_after)
        if self.latency > 0:
            self._stopping.wait(self.latency)  # stop() cuts the wait short
        short, messy, script = self._take_answer_style()
        if script is not None:
            return _reply(200, completion(info["deployment"], script.content, info["text"],
                                          finish_reason=script.finish_reason, refusal=script.refusal))
        content = answer_text(info["prompt"], short=short, messy_style=messy)
        return _reply(200, completion(info["deployment"], content, info["text"]))

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

    def _take_answer_style(self) -> tuple[bool, bool, Scripted | None]:
        """Return (short, messy, script) for this answer, consuming one `short_next` credit."""
        with self._lock:
            short = self._short > 0
            if short:
                self._short -= 1
            return short, self.messy, self.script

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


def _error(status: int, kind: str, code: str, message: str, retry_after: float | None = None) -> Reply:
    """Return an OpenAI-style error reply, with the retry headers the SDK honours when given."""
    headers = {}
    if retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after))),
                   "retry-after-ms": str(max(1, round(retry_after * 1000)))}
    return _reply(status, {"error": {"message": message, "type": kind, "code": code}}, headers)


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

# Small built-in vocabularies: enough combinations that a few dozen items never repeat.
_ZH_QUALITIES = ["可折叠", "轻便", "智能", "防水", "便携", "模块化", "自清洁", "低噪",
                 "节能", "可调节", "柔性", "发光", "抗菌", "磁吸", "无线", "耐磨"]
_ZH_THINGS = ["水杯", "护膝", "背包", "跳绳", "头盔", "手环", "座椅", "台灯",
              "雨伞", "跑鞋", "计时器", "收纳盒", "拉力带", "瑜伽垫", "水壶", "护腕"]
_EN_WORDS = ["folding frame", "city park", "morning light", "minimal", "soft shadows",
             "matte plastic", "wooden table", "sports field", "close-up", "clean lines",
             "aluminium body", "blue hour", "studio light", "kitchen counter", "river bank",
             "wide angle", "pastel colours", "rubber grip", "glass surface", "mountain trail"]
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


def _fake_item(prompt: str, index: int, attempt: int, english: bool) -> str:
    """Return one fake item for position `index` (another one for each `attempt`)."""
    seed = _digest(prompt, f"{index}/{attempt}")
    if english:
        words = _pick(str(seed), _EN_WORDS, 4)
        return ", ".join(words)
    return _ZH_QUALITIES[seed % len(_ZH_QUALITIES)] + _ZH_THINGS[(seed // 97) % len(_ZH_THINGS)]


def answer_items(prompt: str, count: int | None = None) -> list[str]:
    """Return the items answering `prompt`: `count` of them (default: as many as asked)."""
    count = requested_count(prompt) if count is None else count
    pool = candidates(prompt)
    if pool is not None:
        return _pick(prompt, pool, min(count, len(pool)))
    english, items = wants_english(prompt), []
    for index in range(count):
        for attempt in range(20):
            item = _fake_item(prompt, index, attempt, english)
            if item not in items:
                break
        else:  # vocabulary exhausted: make it unique by its position
            item = f"{item} {index + 1}"
        items.append(item)
    return items


def messy(items: list[str]) -> str:
    """Join `items` the way a chatty model would: numbering, bullets, quotes, blanks, mixed `#`."""
    styles = [
        lambda i, s: f"{i + 1}. {s}",
        lambda i, s: f"{_CIRCLED[i % len(_CIRCLED)]}{s}",
        lambda i, s: f"- {s}",
        lambda i, s: f"“{s}”",
        lambda i, s: f' "{s}" ',
        lambda i, s: f"• {s}",
    ]
    parts = [styles[i % len(styles)](i, item) for i, item in enumerate(items)]
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


def main(argv: list[str] | None = None) -> None:
    """Run the simulator in the foreground until interrupted."""
    parser = command_line("Chat-completions simulator (test double).", 8001, "seconds per call")
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--messy", action="store_true", help="decorate answers like a chatty model")
    args = parser.parse_args(argv)
    sim = ChatSimulator(api_key=args.api_key, latency=args.latency, host=args.host, port=args.port)
    sim.messy = args.messy
    sim.start()
    serve_until_stopped(sim.stop, "chat simulator at %s; point the server at it with AZURE_OPENAI_ENDPOINT=%s "
                        "AZURE_OPENAI_API_KEY=<the --api-key value> (or OPENAI_BASE_URL=%s/v1 "
                        "OPENAI_API_KEY=<the --api-key value>)", sim.url, sim.url, sim.url)

if __name__ == "__main__":
    main()
