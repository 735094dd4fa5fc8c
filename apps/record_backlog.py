"""Generation records the database could not take, kept in memory until it answers again.

When MongoDB is unreachable as a generation ends, the participant still gets the stimuli
(they need no database) and the record waits here, bounded (RECORD_BACKLOG, default 16:
a record holds its images until written, a few MB each). The next generation whose own
record is written writes up to `batch` waiting ones after it, so the backlog drains as the
study goes on without a resident thread. A record dropped because the backlog is full,
or still waiting when the process exits, is logged at ERROR with its id.
"""
from __future__ import annotations

import atexit
import logging
import threading
from collections import deque
from typing import Protocol

from flask import current_app
from pymongo.errors import ConnectionFailure

log = logging.getLogger(__name__)

EXTENSION = "record_backlog"


class PendingRecord(Protocol):
    """A record that can try to write itself again (an apps.records.Recorder)."""

    record_id: object

    def write(self) -> None:
        """Write the record, or raise."""


class RecordBacklog:
    """A bounded, thread-safe queue of records waiting for the database."""

    def __init__(self, limit: int = 16, batch: int = 4) -> None:
        self.limit, self.batch = max(1, limit), max(1, batch)
        self._waiting: deque[PendingRecord] = deque()
        self._lock = threading.Lock()
        atexit.register(self._report_lost)

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)

    def keep(self, record: PendingRecord) -> None:
        """Queue `record` for a later write, dropping the oldest one when full."""
        with self._lock:
            dropped = self._waiting.popleft() if len(self._waiting) >= self.limit else None
            self._waiting.append(record)
            waiting = len(self._waiting)
        log.warning("database unavailable: generation record %s kept in memory (%d waiting)",
                    record.record_id, waiting)
        if dropped is not None:
            log.error("generation record %s lost: more than %d records waited for the database "
                      "(raise RECORD_BACKLOG)", dropped.record_id, self.limit)

    def flush(self) -> int:
        """Write up to `batch` waiting records, oldest first; return how many were written."""
        with self._lock:
            taken = [self._waiting.popleft() for _ in range(min(self.batch, len(self._waiting)))]
        written = 0
        for index, record in enumerate(taken):
            try:
                record.write()
            except ConnectionFailure:
                with self._lock:  # down again: put the rest back, in order, for the next time
                    self._waiting.extendleft(reversed(taken[index:]))
                break
            except Exception:  # cannot be written however long it waits: say so and drop it
                log.exception("generation record %s could not be written and is dropped", record.record_id)
                continue
            written += 1
        if written:
            log.info("wrote %d generation record(s) that waited for the database", written)
        return written

    def _report_lost(self) -> None:
        with self._lock:
            ids = [str(record.record_id) for record in self._waiting]
        if ids:
            log.error("exiting with %d generation record(s) never written: %s", len(ids), ", ".join(ids))


def get_backlog() -> RecordBacklog:
    """Return the current app's backlog, created on first use."""
    extensions = current_app.extensions
    if EXTENSION not in extensions:
        extensions.setdefault(EXTENSION, RecordBacklog(current_app.config["RECORD_BACKLOG"]))
    return extensions[EXTENSION]
