"""The failures of the paint pipelines that are not the backends' own."""
from __future__ import annotations

from agent.errors import BackendError


class SettingsError(Exception):
    """The files under settings/ are missing or wrong; the server must not start."""


class TemplateCheckError(SettingsError):
    """A prompt template does not parse, or renders badly with its sample variables."""


class ShortAnswer(BackendError):
    """GPT gave fewer usable items than a step asked for, twice."""

    backend = "gpt"
    http_status = 502  # the upstream answered, but not with what was asked

    def __init__(self, asked: int, got: int) -> None:
        super().__init__(f"GPT answer came back short after one retry: asked for {asked} items, "
                         f"got {got}")
        self.asked = asked
        self.got = got


class Aborted(Exception):
    """Another step of the same request failed, so this one does not start."""
