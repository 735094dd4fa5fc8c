"""The error tree shared by every backend client.

A route turns any `BackendError` into the envelope with code 2, HTTP 503 (504 for a
timeout) and a message naming the backend, the step when known, and the cause.
"""
from __future__ import annotations


class BackendError(Exception):
    """A generative backend (GPT or Stable Diffusion) could not give an answer."""

    backend = "backend"
    http_status = 503

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step

    def describe(self) -> str:
        """Return the message with the failing pipeline step in front, when one is known."""
        text = str(self)
        return f"{self.step}: {text}" if self.step else text


class BackendTimeout(BackendError):
    """The backend did not answer in time."""

    http_status = 504
