"""Typed failures of GPT calls, and their translation from the `openai` SDK's exceptions.

Import them from `agent.gpt`. Every message names the deployment and the cause, and
never contains an API key: a refused key's error text is left out (OpenAI echoes part of
the key in it), and the configured key is masked in any other server message.
"""
from __future__ import annotations

import openai

from agent.errors import BackendError, BackendTimeout

class GPTError(BackendError):
    """A GPT deployment could not give an answer."""

    backend = "gpt"
    kind = "error"  # the metrics label of this failure

    def __init__(self, deployment: str | None, cause: str, *, retries: int = 0,
                 status: int | None = None, step: str | None = None) -> None:
        name = f"GPT deployment '{deployment}'" if deployment else "GPT"
        super().__init__(f"{name}: {cause}", step=step)
        self.deployment = deployment
        self.cause = cause
        self.retries = retries
        self.status = status


class GPTNotConfigured(GPTError):
    """No GPT endpoint or key is configured."""

    kind = "not_configured"


class GPTTimeout(GPTError, BackendTimeout):
    """The deployment did not answer within GPT_TIMEOUT (after the SDK's retries)."""

    kind = "timeout"


class GPTRateLimited(GPTError):
    """The deployment kept answering HTTP 429 (after the SDK's retries)."""

    kind = "rate_limited"


class GPTAuthError(GPTError):
    """The key was refused (HTTP 401/403)."""

    kind = "auth"


class GPTBadRequest(GPTError):
    """The deployment rejected the request itself (HTTP 4xx other than 401/403/429)."""

    kind = "bad_request"


class GPTServerError(GPTError):
    """The deployment failed on its side (HTTP 5xx, after the SDK's retries)."""

    kind = "server_error"


class GPTConnectionError(GPTError):
    """The endpoint could not be reached."""

    kind = "connection"


class GPTEmptyAnswer(GPTError):
    """The deployment answered, but with no choices or only whitespace."""

    kind = "empty_answer"


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
