"""Routes about the server itself."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("system", __name__)


@bp.route("/ping", methods=["GET", "POST"])
def ping():
    """Answer the plain text `pong` for probes and curl."""
    return "pong", 200, {"Content-Type": "text/plain; charset=utf-8"}
