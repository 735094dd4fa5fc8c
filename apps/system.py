"""Routes about the server itself: liveness, readiness and metrics.

/ping, /healthz and /readyz are open even when API_TOKEN is set (load balancers probe
anonymously; core.security); /metrics needs the token then (Prometheus sends it as a
bearer token). None of them calls a model.
"""
from __future__ import annotations

from typing import Literal

from flask import Blueprint, current_app
from pydantic import BaseModel

from core import monitoring
from core.envelope import CODE_BACKEND, CODE_STORAGE, envelope, ok

bp = Blueprint("system", __name__)


class Alive(BaseModel):
    """GET /healthz: the process answers."""

    status: Literal["alive"] = "alive"


@bp.route("/ping", methods=["GET", "POST"])
def ping():
    """Answer the plain text `pong` for probes and curl."""
    return "pong", 200, {"Content-Type": "text/plain; charset=utf-8"}


@bp.get("/healthz")
def healthz():
    """Answer that the process is alive, without any I/O."""
    return ok(Alive().model_dump())


@bp.get("/readyz")
def readyz():
    """Answer 200 when the database, GPT and an SD instance are usable, else 503; details either way."""
    ready, data, message = monitoring.readiness(current_app)
    if ready:
        return envelope(data.model_dump(exclude_none=True), message=message)
    storage = not data.database.reachable or data.database.disk_full
    code = CODE_STORAGE if storage else CODE_BACKEND
    return envelope(data.model_dump(exclude_none=True), success=False, code=code, message=message, status=503)


@bp.get("/metrics")
def metrics_text():
    """Answer every metric in the Prometheus text format."""
    return monitoring.exposition()
