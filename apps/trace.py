"""What a generation did, step by step: the raw material of its record.

Pipelines append one entry per LLM step and per image job, from whatever thread ran
it; the records module (apps/records.py) stores the entries, with images moved to the
image store. Entries are plain dicts so a researcher reads them as they are stored.

LLM entry keys: kind="llm", step, template, prompt, images (list of SHA-256 of images
sent, may be empty), raw, items, deployment, latency, retries, attempt, error.
Image entry keys: kind="image", step, payload, instance, info, latency, queue_wait,
attempts, errors, image (a core.image_store.Image on success, else None), error.
"""
from __future__ import annotations

import threading
from typing import Any


class Trace:
    """A thread-safe list of step entries for one generation."""

    def __init__(self) -> None:
        self._entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def llm(self, **fields: Any) -> None:
        """Record one LLM call (successful or not)."""
        self._append({"kind": "llm", **fields})

    def image(self, **fields: Any) -> None:
        """Record one image job (successful or not)."""
        self._append({"kind": "image", **fields})

    def _append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append(entry)

    @property
    def entries(self) -> list[dict[str, Any]]:
        """A copy of the entries so far, in the order they finished."""
        with self._lock:
            return list(self._entries)
