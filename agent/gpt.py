"""The GPT client: chat and vision calls to Azure OpenAI (or OpenAI) through the `openai` SDK.

Timeouts and retries are the SDK's own (GPT_TIMEOUT, GPT_MAX_RETRIES; it honours Retry-After).
On top of it this client adds a concurrency limit per deployment (GPT_MAX_CONCURRENCY), so a
burst of participants queues here instead of tripping the deployment's rate limit, typed
errors (agent.errors, translated from the SDK's own here) instead of empty strings, and
counters for metrics. Error messages never contain an API key: a refused key's error text
is left out (OpenAI echoes part of the key in it), and the configured key is masked in any
other server message.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import openai

from agent.errors import (
    GPTAuthError, GPTBadRequest, GPTConnectionError, GPTEmptyAnswer, GPTError, GPTNotConfigured,
    GPTRateLimited, GPTServerError, GPTTimeout,
)

log = logging.getLogger(__name__)

NOT_CONFIGURED = "not configured: set AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY, or OPENAI_API_KEY"


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
    if isinstance(error, openai.APIStatusError):  # BadRequestError, NotFoundError, 409, 422, ...
        return GPTBadRequest(deployment, f"request rejected (HTTP {status}){after}: {said}",
                             retries=retries, status=status)
    return GPTError(deployment, f"unreadable answer: {said}", retries=retries)


@dataclass(frozen=True)
class ChatAnswer:
    """The text of one answer, and how it was obtained."""

    text: str
    deployment: str
    latency: float  # seconds, including the SDK's retries and the wait for a slot
    retries: int
    usage: dict | None


class _Deployment:
    """The slot semaphore and counters of one deployment."""

    def __init__(self, limit: int) -> None:
        self.slots = threading.BoundedSemaphore(limit)
        self.calls = self.retries = self.in_flight = self.waiting = 0
        self.failures: dict[str, int] = {}

    def to_dict(self) -> dict[str, Any]:
        """Return the counters as plain data (call under the client's lock)."""
        return {"calls": self.calls, "retries": self.retries, "in_flight": self.in_flight,
                "waiting": self.waiting, "failures": dict(self.failures)}


class GPTClient:
    """Chat and vision calls to one provider; build it once with `from_config` and share it."""

    def __init__(self, sdk: openai.OpenAI | None, *, provider: str, chat_deployment: str,
                 vision_deployment: str, max_concurrency: int, secret: str | None = None,
                 reason: str = NOT_CONFIGURED) -> None:
        self._sdk = sdk
        self.provider = provider if sdk is not None else "none"
        self.configured = sdk is not None
        self.chat_deployment = chat_deployment
        self.vision_deployment = vision_deployment
        self.max_concurrency = max(1, max_concurrency)
        self._secret = secret  # only to mask it in error messages
        self._reason = reason
        self._lock = threading.Lock()
        self._deployments: dict[str, _Deployment] = {}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> GPTClient:
        """Build the client once from config.from_env's settings; without a key, an unconfigured one."""
        common = {"timeout": cfg["GPT_TIMEOUT"], "max_retries": cfg["GPT_MAX_RETRIES"]}
        limit = cfg["GPT_MAX_CONCURRENCY"]
        chat, vision = cfg["AZURE_OPENAI_DEPLOYMENT"], cfg["AZURE_OPENAI_VISION_DEPLOYMENT"]
        if cfg["AZURE_OPENAI_ENDPOINT"]:
            key = cfg["AZURE_OPENAI_API_KEY"]
            if not key:
                return cls(None, provider="none", chat_deployment=chat, vision_deployment=vision,
                           max_concurrency=limit, reason="not configured: AZURE_OPENAI_API_KEY is not set")
            sdk = openai.AzureOpenAI(azure_endpoint=cfg["AZURE_OPENAI_ENDPOINT"], api_key=key,
                                     api_version=cfg["AZURE_OPENAI_API_VERSION"], **common)
            return cls(sdk, provider="azure", chat_deployment=chat, vision_deployment=vision,
                       max_concurrency=limit, secret=key)
        if cfg["OPENAI_API_KEY"]:
            key, model = cfg["OPENAI_API_KEY"], cfg["OPENAI_MODEL"]
            sdk = openai.OpenAI(api_key=key, base_url=cfg["OPENAI_BASE_URL"], **common)
            return cls(sdk, provider="openai", chat_deployment=model, vision_deployment=model,
                       max_concurrency=limit, secret=key)
        return cls(None, provider="none", chat_deployment=chat, vision_deployment=vision,
                   max_concurrency=limit)

    def chat(self, prompt: str | list[dict], *, temperature: float | None = None,
             max_tokens: int | None = None) -> ChatAnswer:
        """Ask the chat deployment: a str is one user message, a list is the messages."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return self._complete(self.chat_deployment, messages, temperature, max_tokens)

    def vision(self, prompt: str, images: Sequence[str], *, temperature: float | None = None,
               max_tokens: int | None = None) -> ChatAnswer:
        """Ask the vision deployment about `images` (data URIs, or raw base64 taken as PNG)."""
        if isinstance(images, str):  # one image, not a sequence of characters
            images = [images]
        parts: list[dict] = [{"type": "text", "text": prompt}]
        for image in images:
            url = image if image.startswith("data:") else f"data:image/png;base64,{image}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        messages = [{"role": "user", "content": parts}]
        return self._complete(self.vision_deployment, messages, temperature, max_tokens)

    def snapshot(self) -> dict[str, Any]:
        """Return the counters per deployment (no network)."""
        with self._lock:
            deployments = {name: d.to_dict() for name, d in self._deployments.items()}
        return {"provider": self.provider, "configured": self.configured,
                "max_concurrency": self.max_concurrency, "deployments": deployments}

    def close(self) -> None:
        """Close the SDK client's connections."""
        if self._sdk is not None:
            self._sdk.close()

    def _deployment(self, name: str) -> _Deployment:
        with self._lock:
            if name not in self._deployments:
                self._deployments[name] = _Deployment(self.max_concurrency)
            return self._deployments[name]

    @contextmanager
    def _slot(self, name: str) -> Iterator[_Deployment]:
        """Hold one of the deployment's slots; callers beyond the limit wait here."""
        dep = self._deployment(name)
        if not dep.slots.acquire(blocking=False):
            with self._lock:
                dep.waiting += 1
                first = dep.waiting == 1
            if first:  # once per queue, not once per caller
                log.info("GPT deployment '%s': all %d slots busy, calls are queueing "
                         "(raise GPT_MAX_CONCURRENCY if its quota allows)", name, self.max_concurrency)
            dep.slots.acquire()
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
            dep.slots.release()

    def _fail(self, dep: _Deployment, error: GPTError) -> GPTError:
        """Count `error` and log it (its message never holds the key); return it."""
        with self._lock:
            dep.retries += error.retries
            dep.failures[error.kind] = dep.failures.get(error.kind, 0) + 1
        log.warning("%s", error)
        return error

    def _complete(self, deployment: str, messages: list[dict], temperature: float | None,
                  max_tokens: int | None) -> ChatAnswer:
        """Send one chat completion within a slot and return its answer or raise a GPTError."""
        if self._sdk is None:
            raise self._fail(self._deployment(deployment), GPTNotConfigured(deployment, self._reason))
        options: dict[str, Any] = {"model": deployment, "messages": messages}
        if temperature is not None:
            options["temperature"] = temperature
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        started = time.monotonic()
        with self._slot(deployment) as dep:
            try:
                raw = self._sdk.chat.completions.with_raw_response.create(**options)
                completion = raw.parse()
            except openai.OpenAIError as e:
                raise self._fail(dep, translate(e, deployment, self._secret)) from e
        latency = time.monotonic() - started
        choice = completion.choices[0] if completion.choices else None
        text = (choice.message.content or "") if choice is not None else ""
        if not text.strip():
            reason = f"finish_reason={choice.finish_reason}" if choice is not None else "no choices"
            raise self._fail(dep, GPTEmptyAnswer(deployment, f"empty answer ({reason})",
                                                 retries=raw.retries_taken))
        with self._lock:
            dep.retries += raw.retries_taken
        usage = completion.usage.model_dump(exclude_none=True) if completion.usage else None
        log.debug("GPT deployment '%s' answered in %.2fs after %d retries",
                  deployment, latency, raw.retries_taken)
        return ChatAnswer(text, deployment, latency, raw.retries_taken, usage)
