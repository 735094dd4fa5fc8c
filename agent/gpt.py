"""The GPT client: chat and vision calls to Azure OpenAI (or OpenAI) through the `openai` SDK.

Timeouts and retries are the SDK's own (GPT_TIMEOUT, GPT_MAX_RETRIES; it honours Retry-After).
On top of it this client adds a concurrency limit per GPT deployment (GPT_MAX_CONCURRENCY), so
a burst of participants queues here instead of tripping the deployment's rate limit; typed
errors (agent.errors, translated from the SDK's own here) instead of empty strings; and
counters for metrics. Error messages never contain an API key: a refused key's error text
is left out (OpenAI echoes part of the key in it), and the configured key is masked in any
other server message.

**One limit for the whole server.** The limit is a semaphore of the server's shared state
(core.shared), named `gpt:<deployment>`: with REDIS_URL set it holds for every server
process and host together, so N processes still send at most GPT_MAX_CONCURRENCY calls at
once to a deployment; without it, for this process alone. The counters (calls, waiting, in
flight, failures) stay per process: each process reports its own.

**Two protocols.** A call given a `schema` (a pydantic model) asks for structured outputs:
the SDK's `chat.completions.parse` sends the model as a strict JSON schema and validates the
answer into it (`ChatAnswer.parsed`); an answer that is not JSON of the schema (a service
that ignores response_format) comes back as a text-protocol answer, for the caller to read as
text. A deployment that refuses schemas (HTTP 400 from an older model or api-version, see
`SCHEMA_REFUSALS`) is asked again with the plain prompt and, under GPT_STRUCTURED=auto,
remembered as a text-protocol deployment (logged once at WARNING, shown by `snapshot()`);
under `on` the refusal is an error, under `off` no schema is ever sent.

**What comes back.** Every answer carries its finish_reason, refusal and token usage. A
refusal and the content filter (Azure's HTTP 400 `content_filter`, or finish_reason
`content_filter`) raise `GPTDeclined` errors (code 1: the participant can rephrase); an
answer cut at `max_tokens` (finish_reason `length`) is returned, so the caller can ask again
with a larger budget, but never with `parsed` set.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import openai
import pydantic
from openai.types.chat import ChatCompletion

from agent.errors import (
    GPTAuthError, GPTBadRequest, GPTConnectionError, GPTContentFiltered, GPTEmptyAnswer, GPTError,
    GPTNotConfigured, GPTRateLimited, GPTRefused, GPTSchemaRefused, GPTServerError, GPTTimeout,
)
from core.shared import InProcess, Semaphore, Shared

log = logging.getLogger(__name__)

NOT_CONFIGURED = "not configured: set AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY, or OPENAI_API_KEY"
STRUCTURED, TEXT = "structured", "text"  # the two protocols of a call with a schema

# How Azure and OpenAI answer (HTTP 400) a json_schema response_format they cannot honour: an
# api-version before 2024-08-01-preview, a model before gpt-4o 2024-08-06, or an api-version that
# predates response_format itself. Only these fall back to the text protocol: a schema the
# service finds invalid ("Invalid schema for response_format ...") is our mistake, and stays one.
SCHEMA_REFUSALS = re.compile(
    r"json_schema is enabled only for api versions"
    r"|'response_format' of type 'json_schema' is not supported"
    r"|'response_format' must be one of"
    r"|unrecognized request argument supplied: response_format", re.IGNORECASE)
# What a participant can do about a declined prompt, in the participant's language.
REPHRASE = "请换一种说法描述设计任务或草图标注后再试"


def retries_of(error: openai.APIError) -> int:
    """Return how many retries the SDK made before `error` (it numbers each attempt's request)."""
    request = getattr(error, "request", None)
    try:
        return int(request.headers.get("x-stainless-retry-count", 0)) if request is not None else 0
    except ValueError:
        return 0


def _server_message(error: openai.APIError, secret: str | None) -> str:
    """Return the server's own error message, with the configured key masked."""
    body = error.body
    text = str((body.get("message") if isinstance(body, dict) else None) or error.message)
    return text.replace(secret, "***") if secret else text


def _filtered(body: object) -> str:
    """Return the categories Azure's content filter names in an error body, e.g. " (violence)"."""
    inner = body.get("innererror") if isinstance(body, dict) else None
    result = inner.get("content_filter_result") if isinstance(inner, dict) else None
    if not isinstance(result, dict):
        return ""
    hits = sorted(name for name, verdict in result.items() if isinstance(verdict, dict) and verdict.get("filtered"))
    return f" ({', '.join(hits)})" if hits else ""


def translate(error: openai.OpenAIError, deployment: str, secret: str | None = None) -> GPTError:
    """Return the GPTError for an SDK exception (most specific SDK class first)."""
    if not isinstance(error, openai.APIError):
        return GPTError(deployment, f"SDK error: {type(error).__name__}")
    retries = retries_of(error)
    after = f" after {retries} retries" if retries else ""
    status = getattr(error, "status_code", None)
    said = _server_message(error, secret)
    if isinstance(error, openai.APITimeoutError):
        return GPTTimeout(deployment, f"timed out{after}", retries=retries)
    if isinstance(error, openai.APIConnectionError):
        return GPTConnectionError(deployment, f"cannot connect{after}", retries=retries)
    if isinstance(error, openai.RateLimitError):
        return GPTRateLimited(deployment, f"rate limited (HTTP 429){after}", retries=retries, status=429)
    if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
        code = f", {error.code}" if error.code else ""
        return GPTAuthError(deployment, f"key refused (HTTP {status}{code})", status=status)
    if isinstance(error, openai.APIStatusError) and error.status_code >= 500:
        return GPTServerError(deployment, f"server error (HTTP {status}){after}: {said}",
                              retries=retries, status=status)
    if isinstance(error, openai.BadRequestError) and error.code == "content_filter":
        return GPTContentFiltered(deployment, f"the content filter blocked the prompt{_filtered(error.body)}; "
                                  f"{REPHRASE}", status=status)
    if isinstance(error, openai.BadRequestError) and SCHEMA_REFUSALS.search(said):
        return GPTSchemaRefused(deployment, f"refuses structured outputs (HTTP {status}): {said}", status=status)
    if isinstance(error, openai.APIStatusError):  # BadRequestError, NotFoundError, 409, 422, ...
        return GPTBadRequest(deployment, f"request rejected (HTTP {status}){after}: {said}",
                             retries=retries, status=status)
    return GPTError(deployment, f"unreadable answer: {said}", retries=retries)


@dataclass(frozen=True)
class ChatAnswer:
    """The text of one answer, and how it was obtained."""

    text: str  # the message's content as sent: JSON under the structured protocol
    deployment: str
    latency: float  # seconds, including the SDK's retries and the wait for a slot
    retries: int
    usage: dict | None
    finish_reason: str | None = None
    refusal: str | None = None
    protocol: str = TEXT  # STRUCTURED when a schema was sent and accepted
    parsed: Any = None  # the schema's model of a complete answer (structured protocol), else None
    max_tokens: int | None = None  # the budget the answer was asked with


class _Deployment:
    """The slot semaphore (shared) and counters (this process's) of one deployment."""

    def __init__(self, slots: Semaphore) -> None:
        self.slots = slots
        self.calls = self.retries = self.in_flight = self.waiting = 0
        self.failures: dict[str, int] = {}

    def to_dict(self) -> dict[str, Any]:
        """Return the counters as plain data (call under the client's lock)."""
        return {"calls": self.calls, "retries": self.retries, "in_flight": self.in_flight,
                "waiting": self.waiting, "failures": dict(self.failures)}


class GPTClient:
    """Chat and vision calls to one provider; build it once with `from_config` and share it."""

    def __init__(self, sdk: openai.OpenAI | None, *, provider: str, chat_deployment: str,
                 vision_deployment: str, max_concurrency: int, structured: str, max_tokens: int,
                 secret: str | None = None, reason: str = NOT_CONFIGURED, shared: Shared | None = None) -> None:
        self._sdk = sdk
        self.provider = provider if sdk is not None else "none"
        self.configured = sdk is not None
        self.chat_deployment = chat_deployment
        self.vision_deployment = vision_deployment
        self.max_concurrency = max(1, max_concurrency)
        self.structured = structured  # GPT_STRUCTURED: "auto", "on" or "off"
        self.max_tokens = max_tokens  # GPT_MAX_TOKENS: the budget of a call that names none
        self._secret = secret  # only to mask it in error messages
        self._reason = reason
        self._shared = shared if shared is not None else InProcess()  # where the slots live
        self._lock = threading.Lock()
        self._deployments: dict[str, _Deployment] = {}
        self._text_only: dict[str, str] = {}  # deployment -> why it answers by the text protocol

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], shared: Shared | None = None) -> GPTClient:
        """Build the client once from config.from_env's settings; without a key, an unconfigured one.

        Its slots are semaphores of `shared`, the server's shared state (None: this process's own).
        """
        common = {"timeout": cfg["GPT_TIMEOUT"], "max_retries": cfg["GPT_MAX_RETRIES"]}
        chat, vision = cfg["AZURE_OPENAI_DEPLOYMENT"], cfg["AZURE_OPENAI_VISION_DEPLOYMENT"]
        own = {"max_concurrency": cfg["GPT_MAX_CONCURRENCY"], "structured": cfg["GPT_STRUCTURED"],
               "max_tokens": cfg["GPT_MAX_TOKENS"], "shared": shared}
        if cfg["AZURE_OPENAI_ENDPOINT"]:
            key = cfg["AZURE_OPENAI_API_KEY"]
            if not key:
                return cls(None, provider="none", chat_deployment=chat, vision_deployment=vision, **own,
                           reason="not configured: AZURE_OPENAI_API_KEY is not set")
            sdk = openai.AzureOpenAI(azure_endpoint=cfg["AZURE_OPENAI_ENDPOINT"], api_key=key,
                                     api_version=cfg["AZURE_OPENAI_API_VERSION"], **common)
            return cls(sdk, provider="azure", chat_deployment=chat, vision_deployment=vision, **own, secret=key)
        if cfg["OPENAI_API_KEY"]:
            key, model = cfg["OPENAI_API_KEY"], cfg["OPENAI_MODEL"]
            sdk = openai.OpenAI(api_key=key, base_url=cfg["OPENAI_BASE_URL"], **common)
            return cls(sdk, provider="openai", chat_deployment=model, vision_deployment=model, **own, secret=key)
        return cls(None, provider="none", chat_deployment=chat, vision_deployment=vision, **own)

    def chat(self, prompt: str | list[dict], *, schema: type[pydantic.BaseModel] | None = None,
             temperature: float | None = None, max_tokens: int | None = None) -> ChatAnswer:
        """Ask the chat deployment: a str is one user message, a list is the messages.

        With a `schema`, ask for an answer in that model (structured outputs) when the
        deployment's protocol allows it; see the module's docstring.
        """
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return self._complete(self.chat_deployment, messages, schema, temperature, max_tokens)

    def vision(self, prompt: str, images: Sequence[str], *, schema: type[pydantic.BaseModel] | None = None,
               temperature: float | None = None, max_tokens: int | None = None) -> ChatAnswer:
        """Ask the vision deployment about `images` (data URIs, or raw base64 taken as PNG)."""
        if isinstance(images, str):  # one image, not a sequence of characters
            images = [images]
        parts: list[dict] = [{"type": "text", "text": prompt}]
        for image in images:
            url = image if image.startswith("data:") else f"data:image/png;base64,{image}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        messages = [{"role": "user", "content": parts}]
        return self._complete(self.vision_deployment, messages, schema, temperature, max_tokens)

    def protocol(self, deployment: str) -> str:
        """Return how a call with a schema is asked of `deployment`: STRUCTURED or TEXT."""
        with self._lock:
            text = self.structured == "off" or deployment in self._text_only
        return TEXT if text else STRUCTURED

    def snapshot(self) -> dict[str, Any]:
        """Return the counters per deployment and the protocol of each deployment (no network)."""
        with self._lock:
            deployments = {name: d.to_dict() for name, d in self._deployments.items()}
            fallbacks = dict(self._text_only)
        names = dict.fromkeys([self.chat_deployment, self.vision_deployment, *deployments])
        protocols = {name: {"protocol": self.protocol(name), "fallback": fallbacks.get(name)} for name in names}
        return {"provider": self.provider, "configured": self.configured,
                "max_concurrency": self.max_concurrency, "deployments": deployments,
                "structured": self.structured, "protocols": protocols}

    def close(self) -> None:
        """Close the SDK client's connections."""
        if self._sdk is not None:
            self._sdk.close()

    def _deployment(self, name: str) -> _Deployment:
        with self._lock:
            if name not in self._deployments:
                self._deployments[name] = _Deployment(self._shared.semaphore(f"gpt:{name}", self.max_concurrency))
            return self._deployments[name]

    @contextmanager
    def _slot(self, name: str) -> Iterator[_Deployment]:
        """Hold one of the deployment's slots; callers beyond the limit wait here."""
        dep = self._deployment(name)
        token = dep.slots.try_acquire()
        if token is None:
            with self._lock:
                dep.waiting += 1
                first = dep.waiting == 1
            if first:  # once per queue in this process, not once per caller
                log.info("GPT deployment '%s': all %d slots busy, calls are queueing "
                         "(raise GPT_MAX_CONCURRENCY if its quota allows)", name, self.max_concurrency)
            try:
                token = dep.slots.acquire()
            finally:  # a shared state that failed (Redis unreachable) leaves no caller counted as waiting
                with self._lock:
                    dep.waiting -= 1
        with self._lock:
            dep.in_flight += 1
            dep.calls += 1
        try:
            yield dep
        finally:
            with self._lock:
                dep.in_flight -= 1
            dep.slots.release(token)

    def _fail(self, dep: _Deployment, error: GPTError) -> GPTError:
        """Count `error` and log it (its message never holds the key); return it."""
        with self._lock:
            dep.retries += error.retries
            dep.failures[error.kind] = dep.failures.get(error.kind, 0) + 1
        log.warning("%s", error)
        return error

    def _fall_back(self, deployment: str, refused: GPTSchemaRefused) -> None:
        """Remember that `deployment` refuses schemas, and say so once."""
        with self._lock:
            first = deployment not in self._text_only
            self._text_only.setdefault(deployment, refused.cause)
        if first:
            log.warning("GPT deployment '%s' %s; GPT_STRUCTURED=auto: it is asked by the text protocol "
                        "from now on (structured outputs need gpt-4o 2024-08-06 or later and api-version "
                        "2024-08-01-preview or later)", deployment, refused.cause)

    def _complete(self, deployment: str, messages: list[dict], schema: type[pydantic.BaseModel] | None,
                  temperature: float | None, max_tokens: int | None) -> ChatAnswer:
        """Send one chat completion within a slot and return its answer or raise a GPTError."""
        if self._sdk is None:
            raise self._fail(self._deployment(deployment), GPTNotConfigured(deployment, self._reason))
        options: dict[str, Any] = {"model": deployment, "messages": messages,
                                   "max_tokens": self.max_tokens if max_tokens is None else max_tokens}
        if temperature is not None:
            options["temperature"] = temperature
        if schema is not None and self.protocol(deployment) == STRUCTURED:
            try:
                return self._send(deployment, options, schema)
            except GPTSchemaRefused as refused:
                if self.structured == "on":
                    raise
                self._fall_back(deployment, refused)
        return self._send(deployment, options, None)

    def _send(self, deployment: str, options: dict[str, Any],
              schema: type[pydantic.BaseModel] | None) -> ChatAnswer:
        """Send one call within a slot (with `schema`: structured outputs) and read its answer."""
        started = time.monotonic()
        with self._slot(deployment) as dep:
            try:
                if schema is None:
                    raw = self._sdk.chat.completions.with_raw_response.create(**options)
                else:
                    raw = self._sdk.chat.completions.with_raw_response.parse(**options, response_format=schema)
                completion, parsed, ignored = _read(raw)
            except openai.OpenAIError as e:
                error = translate(e, deployment, self._secret)
                if isinstance(error, GPTSchemaRefused) and self.structured == "auto":
                    raise error from e  # no failure: the caller falls back to the text protocol
                raise self._fail(dep, error) from e
            protocol = STRUCTURED if schema is not None and not ignored else TEXT  # ignored: read it as text
            answer = _answer(completion, parsed, deployment, time.monotonic() - started, raw.retries_taken,
                             protocol, options["max_tokens"])
            problem = _problem(answer)
            if problem is not None:
                raise self._fail(dep, problem)
        with self._lock:
            dep.retries += answer.retries
        log.debug("GPT deployment '%s' answered in %.2fs after %d retries (%s, finish_reason %s)",
                  deployment, answer.latency, answer.retries, answer.protocol, answer.finish_reason)
        return answer


def _read(raw: Any) -> tuple[ChatCompletion, Any, bool]:
    """Return the completion of a raw SDK response, its parsed model (None unless complete and valid),
    and whether the answer ignored the schema (complete, but not JSON of it)."""
    try:
        completion = raw.parse()
    except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError) as cut:
        return cut.completion, None, False  # the SDK's parse refuses these: the caller reads the finish_reason
    except pydantic.ValidationError:  # a service that ignores response_format answered as it would in text
        return ChatCompletion.model_validate(raw.http_response.json()), None, True
    choice = completion.choices[0] if completion.choices else None
    return completion, getattr(choice.message, "parsed", None) if choice is not None else None, False


def _answer(completion: ChatCompletion | None, parsed: Any, deployment: str, latency: float, retries: int,
            protocol: str, max_tokens: int) -> ChatAnswer:
    """Return the ChatAnswer of one completion's first choice."""
    choice = completion.choices[0] if completion is not None and completion.choices else None
    message = choice.message if choice is not None else None
    usage = completion.usage.model_dump(exclude_none=True) if completion is not None and completion.usage else None
    return ChatAnswer(text=(message.content or "") if message is not None else "", deployment=deployment,
                      latency=latency, retries=retries, usage=usage,
                      finish_reason=choice.finish_reason if choice is not None else None,
                      refusal=message.refusal if message is not None else None,
                      protocol=protocol, parsed=parsed, max_tokens=max_tokens)


def _problem(answer: ChatAnswer) -> GPTError | None:
    """Return the error an answer is (a refusal, the content filter, nothing at all), or None."""
    deployment, retries = answer.deployment, answer.retries
    if answer.refusal:
        return GPTRefused(deployment, f"the model refused to answer: {answer.refusal.strip()[:200]}; {REPHRASE}",
                          answer=answer, retries=retries)
    if answer.finish_reason == "content_filter":
        return GPTContentFiltered(deployment, f"the content filter stopped the answer (finish_reason "
                                  f"content_filter); {REPHRASE}", answer=answer, retries=retries)
    if answer.finish_reason == "length":
        return None  # cut at max_tokens: the caller may ask again with a larger budget
    if not answer.text.strip():
        reason = f"finish_reason={answer.finish_reason}" if answer.finish_reason else "no choices"
        return GPTEmptyAnswer(deployment, f"empty answer ({reason})", retries=retries)
    return None
