"""Routes about the server itself: liveness, readiness and metrics.

/ping is the web client's, on the participant surface; /healthz and /readyz are probes,
which load balancers poll anonymously (core.security), /readyz giving its details to
researchers only; /metrics is a researcher route (Prometheus sends the token as a bearer
token). None of them calls a model.
"""
from __future__ import annotations

from typing import Literal

from flask import Blueprint, current_app
from pydantic import BaseModel

from core import monitoring
from core.envelope import CODE_BACKEND, CODE_STORAGE, envelope, ok
from core.security import is_researcher, participant, probe, researcher

bp = Blueprint("system", __name__)

DETAILS_WITHHELD = " (details for researchers: from the server's machine, or with the researcher token)"


class Alive(BaseModel):
    """GET /healthz: the process answers."""

    status: Literal["alive"] = "alive"


@bp.route("/ping", methods=["GET", "POST"])
@participant
def ping():
    """Answer the plain text `pong` for probes and curl."""
    return "pong", 200, {"Content-Type": "text/plain; charset=utf-8"}


@bp.get("/healthz")
@probe
def healthz():
    """Answer that the process is alive, without any I/O."""
    return ok(Alive().model_dump())


@bp.get("/readyz")
@probe
def readyz():
    """Answer 200 when the database, GPT and an SD instance are usable, else 503; details to researchers."""
    ready, readiness, message = monitoring.readiness(current_app)
    database = readiness.database
    code = CODE_STORAGE if not database.reachable or database.disk_full else CODE_BACKEND
    data = readiness.model_dump(exclude_none=True)
    if not is_researcher():  # instance names and errors tell a stranger what runs behind the server
        data, message = None, ("ready" if ready else "not ready") + DETAILS_WITHHELD
    if ready:
        return envelope(data, message=message)
    return envelope(data, success=False, code=code, message=message, status=503)


@bp.get("/metrics")
@researcher
def metrics_text():
    """Answer every metric in the Prometheus text format."""
    return monitoring.exposition()
