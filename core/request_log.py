"""One JSON line per request, and a request id that follows it into the response.

The line carries the request id (also sent back as `X-Request-ID`), method, route
pattern, status, duration and client address; never a query string, body, header
value, key, token or image.
"""
from __future__ import annotations

import json
import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

access_log = logging.getLogger("refinity.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def request_id() -> str:
    """Return the current request's id."""
    return g.get("request_id", "-")


def _begin() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
    g.started = time.perf_counter()


def elapsed() -> float:
    """Return the seconds since the current request began."""
    return time.perf_counter() - g.get("started", time.perf_counter())


def route_label() -> str:
    """Return the route pattern of the current request (not its concrete path), for logs and metrics."""
    return request.url_rule.rule if request.url_rule else "<unmatched>"


def _finish(response: Response) -> Response:
    duration = elapsed()
    response.headers["X-Request-ID"] = request_id()
    access_log.info(json.dumps({
        "event": "request",
        "request_id": request_id(),
        "method": request.method,
        "route": route_label(),
        "status": response.status_code,
        "duration_ms": round(duration * 1000, 1),
        "remote": request.remote_addr,
    }))
    return response


def init_app(app: Flask) -> None:
    """Give every request of `app` an id and log it as one JSON line when it ends."""
    app.before_request(_begin)
    app.after_request(_finish)
