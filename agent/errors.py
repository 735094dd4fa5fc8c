"""Every error of the backend clients, in one tree; import them from here.

A route turns any `BackendError` into the envelope with code 2, HTTP 503 (504 for a
timeout) and a message naming the backend, the step when known, and the cause. The
errors a participant's own input causes (`caused_by_input`: the content filter, a
refusal) answer code 1 with HTTP 422 instead: asking again with the same words would
meet the same answer, rephrasing them may not. Two more are the participant's own doing
and answer code 1: too many of their images waiting (429, with Retry-After from
`retry_after`) and their generation cancelled (409: DELETE /jobs/<id> came first; a
/generate waiting for that job is answered so).

BackendError                 a generative backend could not give an answer (503)
├── BackendTimeout           it did not answer in time (504); every timeout below is one too
├── Cancelled                the generation was cancelled (DELETE /jobs/<id>) before it ended (409, code 1)
├── GPTError                 a GPT deployment failed (agent.gpt; `kind` is its metrics label)
│   ├── GPTNotConfigured     no endpoint or key is configured
│   ├── GPTTimeout           no answer within GPT_TIMEOUT (also a BackendTimeout)
│   ├── GPTRateLimited       HTTP 429 beyond the SDK's retries
│   ├── GPTAuthError         the key was refused (401/403)
│   ├── GPTBadRequest        the request itself was rejected (other 4xx)
│   │   └── GPTSchemaRefused the deployment cannot answer with a JSON schema (GPT_STRUCTURED=on)
│   ├── GPTServerError       HTTP 5xx beyond the SDK's retries
│   ├── GPTConnectionError   the endpoint could not be reached
│   ├── GPTEmptyAnswer       an answer with no text
│   └── GPTDeclined          the deployment declined the prompt (422, code 1)
│       ├── GPTContentFiltered  Azure's content filter (HTTP 400 or finish_reason)
│       └── GPTRefused       the model's own refusal (`message.refusal`)
└── SDError                  a Stable Diffusion WebUI call failed (agent.sd, agent.pool)
    ├── SDConnectionError *  the connection was refused, reset or dropped
    ├── SDTimeout *          no connection or answer in time (also a BackendTimeout)
    ├── SDServerError *      an error status that is the instance's fault (5xx, 401, 404, ...)
    ├── SDBadResponse *      a 2xx answer without decodable images
    ├── SDBadRequest         the instance rejected our payload (400, 422, ...)
    ├── SDCancelled          the job's ImageControl was cancelled (also a Cancelled: 409, code 1)
    ├── SDLeaseLost *        the job's lease expired while it ran (its process did not renew it): its image
    │                        may have been interrupted by the reaper, so it is drawn again elsewhere
    └── PoolError            no instance could take the job (or the pool is closed)
        ├── PoolTimeout      no instance became free in time (also a BackendTimeout)
        ├── AllInstancesDown every instance is cooling down
        ├── NoInstancesConfigured  SD_ENDPOINTS names no instance
        └── TooManyQueued    SD_MAX_QUEUED_PER_PARTICIPANT of the owner's images already wait (429, code 1)

* INSTANCE_FAILURES: they say something about the instance, so the job may go to another one.

The pipelines add `CheckFailed` and `AnswerCut` (apps.paint.pipelines.steps) under BackendError:
an answer that came back but is not what the step asked for (502).
Messages name the deployment or instance and the cause, never a key or a password.

Context is attached once, where it is known: an SDError raised by the pool carries its
`JobContext` from its constructor, and `step_context` names the pipeline step.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class BackendError(Exception):
    """A generative backend (GPT or Stable Diffusion) could not give an answer."""

    backend = "backend"
    http_status = 503
    caused_by_input = False  # True: the participant's words or requests caused it, so they can act (code 1)
    retry_after: float | None = None  # seconds after which asking again may succeed (Retry-After)
    step: str | None = None  # the pipeline step that failed, named by step_context

    def describe(self) -> str:
        """Return the message with the failing pipeline step in front, when one is known."""
        text = str(self)
        return f"{self.step}: {text}" if self.step else text


class BackendTimeout(BackendError):
    """The backend did not answer in time."""

    http_status = 504


class Cancelled(BackendError):
    """The generation was cancelled before it ended: no step started after, no image kept."""

    http_status = 409
    caused_by_input = True  # the client's own doing: code 1, not a backend's failure

    def __init__(self, message: str = "the generation was cancelled") -> None:
        super().__init__(message)


@contextmanager
def step_context(step: str) -> Iterator[None]:
    """Name `step` on a BackendError raised in the block: the one place a step is attached."""
    try:
        yield
    except BackendError as e:
        if e.step is None:  # the innermost step is the one that failed
            e.step = step
        raise


# -- GPT -----------------------------------------------------------------------------------
class GPTError(BackendError):
    """A GPT deployment could not give an answer."""

    backend = "gpt"
    kind = "error"  # the metrics label of this failure

    def __init__(self, deployment: str | None, cause: str, *, retries: int = 0,
                 status: int | None = None) -> None:
        name = f"GPT deployment '{deployment}'" if deployment else "GPT"
        super().__init__(f"{name}: {cause}")
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


class GPTSchemaRefused(GPTBadRequest):
    """The deployment refused a JSON-schema answer format (an older model or api-version)."""

    kind = "schema_refused"


class GPTServerError(GPTError):
    """The deployment failed on its side (HTTP 5xx, after the SDK's retries)."""

    kind = "server_error"


class GPTConnectionError(GPTError):
    """The endpoint could not be reached."""

    kind = "connection"


class GPTEmptyAnswer(GPTError):
    """The deployment answered, but with no choices or only whitespace."""

    kind = "empty_answer"


class GPTDeclined(GPTError):
    """The deployment would not answer this prompt: the same words would be declined again.

    `answer` is what came back with the decline (an agent.gpt.ChatAnswer), when anything did.
    """

    http_status = 422
    caused_by_input = True

    def __init__(self, deployment: str | None, cause: str, *, answer: object = None, **kwargs: object) -> None:
        super().__init__(deployment, cause, **kwargs)
        self.answer = answer


class GPTContentFiltered(GPTDeclined):
    """Azure's content filter blocked the prompt (HTTP 400) or the answer (finish_reason)."""

    kind = "content_filter"


class GPTRefused(GPTDeclined):
    """The model refused the request (`message.refusal`)."""

    kind = "refusal"


# Kinds of GPT failure that say something about a participant's input, not about the deployment.
DECLINED_KINDS = frozenset(cls.kind for cls in GPTDeclined.__subclasses__())


# -- Stable Diffusion ------------------------------------------------------------------------
@dataclass(frozen=True)
class JobContext:
    """How far a Stable Diffusion job got before it failed, for its generation record."""

    instance: str | None = None  # the instance tried last; None when none was ever leased
    errors: tuple[str, ...] = ()  # why each attempt failed, in order

    @property
    def attempts(self) -> int:
        """How many instances the job tried (each failed)."""
        return len(self.errors)


class SDError(BackendError):
    """A Stable Diffusion WebUI call failed.

    Every subclass takes the same arguments, so the pool can raise any of them again with
    the context of the job it ended.
    """

    backend = "sd"

    def __init__(self, message: str, *, status: int | None = None, job: JobContext = JobContext()) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status the instance answered, when it answered one
        self.job = job


class SDConnectionError(SDError):
    """The instance refused, reset or dropped the connection."""


class SDTimeout(SDError, BackendTimeout):
    """The instance did not accept the connection or answer in time."""


class SDServerError(SDError):
    """The instance answered an error status that is its own fault (5xx, 401, 404, ...)."""


class SDBadRequest(SDError):
    """The instance rejected our payload (400, 422, ...); sending it elsewhere would not help."""


class SDBadResponse(SDError):
    """The instance answered 2xx with something that is not JSON with decodable images."""


class SDLeaseLost(SDError):
    """The lease of the instance expired while the job ran on it, so what it drew cannot be trusted."""


class SDCancelled(SDError, Cancelled):
    """The job's generation was cancelled (agent.pool.ImageControl.cancel) while it waited or ran."""

    def __init__(self, message: str = "the generation was cancelled", **context: object) -> None:
        SDError.__init__(self, message, **context)


# The failures that say something about the instance, so the job may go elsewhere.
INSTANCE_FAILURES = (SDConnectionError, SDTimeout, SDServerError, SDBadResponse, SDLeaseLost)


class PoolError(SDError):
    """No instance of the pool could take the job (also raised once the pool is closed)."""


class PoolTimeout(PoolError, BackendTimeout):
    """Waiting for a free instance took longer than the acquire timeout."""


class AllInstancesDown(PoolError):
    """Every instance is cooling down after a failure or failed its health probe."""


class NoInstancesConfigured(PoolError):
    """SD_ENDPOINTS names no instance."""


class TooManyQueued(PoolError):
    """SD_MAX_QUEUED_PER_PARTICIPANT images of the job's owner already wait (`retry_after`: until they start)."""

    http_status = 429
    caused_by_input = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
