"""How the server writes its logs: one JSON object per line on stderr, whichever entry point runs it.

`python app.py` calls `configure`; gunicorn takes the same `config` as its `logconfig_dict`
(gunicorn.conf.py), so the master's and the worker's own messages come out in the same
shape as the app's. A line holds `time` (the API's one time format), `level`, `logger`,
`pid` and `message`, then the fields a record carries in `extra={"fields": {...}}`, and
`exception` with the traceback when there is one.

Requests are logged by the server, not by the HTTP servers in front of it: one access line
per request (`access`), written by core.monitoring for what the app answers and by
core.serving for what gunicorn or Werkzeug answer themselves. It has the request id,
method, route pattern, status, duration and client address; never a query string, body,
header value, key, token or image. gunicorn's own access log is off, since it writes the
request line, query string included, and so is Werkzeug's request line.
"""
from __future__ import annotations

import logging
import logging.config
from datetime import datetime, timezone
from typing import Any

from core.json_codec import dumps, iso_utc

FIELDS = "fields"  # the attribute of a record whose mapping joins its line
access_log = logging.getLogger("refinity.access")


class JSONFormatter(logging.Formatter):
    """Write a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record's line."""
        line: dict[str, Any] = {
            "time": iso_utc(datetime.fromtimestamp(record.created, timezone.utc)),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
            **getattr(record, FIELDS, {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return dumps(line).decode()


def config(level: str) -> dict[str, Any]:
    """Return the logging configuration (for logging.config.dictConfig) of the server at `level`."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JSONFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
                     "nowhere": {"class": "logging.NullHandler"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # gunicorn's messages go to the root's handler; its access lines nowhere.
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"handlers": ["nowhere"], "propagate": False},
        },
    }


def configure(level: str) -> None:
    """Write every log line, and Python's warnings, as JSON on stderr from now on."""
    logging.config.dictConfig(config(level))
    logging.captureWarnings(True)


def access(*, request_id: str, method: str | None, route: str, status: int, seconds: float,
           remote: str | None, **more: Any) -> None:
    """Write the access line of one answered request."""
    access_log.info("%s %s %s", method or "-", route, status, extra={FIELDS: {
        "event": "request", "request_id": request_id, "method": method, "route": route, "status": status,
        "duration_ms": round(seconds * 1000, 1), "remote": remote, **more}})
