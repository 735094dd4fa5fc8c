"""The errors of the Stable Diffusion client and pool, all under `BackendError` (backend "sd").

Instance failures (connection, timeout, 5xx, bad answer) may be retried on another
instance; `SDBadRequest` is our payload's fault and is not. Pool errors say why no
instance could be leased. Messages name the instance without credentials, and the cause.
"""
from __future__ import annotations

from agent.errors import BackendError, BackendTimeout


class SDError(BackendError):
    """A Stable Diffusion WebUI call failed."""

    backend = "sd"
    # Set by the pool on the error a job ends with: instances tried, and why each failed.
    attempts: int | None = None
    errors: list[str] | None = None


class SDConnectionError(SDError):
    """The instance refused, reset or dropped the connection."""


class SDTimeout(SDError, BackendTimeout):
    """The instance did not accept the connection or answer in time."""


class SDServerError(SDError):
    """The instance answered an error status that is its own fault (5xx, 401, 404, ...)."""

    def __init__(self, message: str, *, status: int, step: str | None = None) -> None:
        super().__init__(message, step=step)
        self.status = status


class SDBadRequest(SDError):
    """The instance rejected our payload (400, 422, ...); sending it elsewhere would not help."""

    def __init__(self, message: str, *, status: int, step: str | None = None) -> None:
        super().__init__(message, step=step)
        self.status = status


class SDBadResponse(SDError):
    """The instance answered 2xx with something that is not JSON with decodable images."""


# The failures that say something about the instance, so the job may go elsewhere.
INSTANCE_FAILURES = (SDConnectionError, SDTimeout, SDServerError, SDBadResponse)


class PoolError(SDError):
    """No instance of the pool could take the job (also raised once the pool is closed)."""


class PoolTimeout(PoolError, BackendTimeout):
    """Waiting for a free instance took longer than the acquire timeout."""


class AllInstancesDown(PoolError):
    """Every instance is cooling down after a failure or failed its health probe."""


class NoInstancesConfigured(PoolError):
    """SD_ENDPOINTS names no instance."""
