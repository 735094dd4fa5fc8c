"""Participant session routes of the sketching app: /paint/start and /paint/save."""
from __future__ import annotations

from flask import Blueprint

from apps.paint import sessions
from apps.paint.session_input import read_save, read_start
from core.db import get_db
from core.envelope import ok

bp = Blueprint("paint", __name__, url_prefix="/paint")


@bp.post("/start")
def start():
    """Create the participant on first visit and return the stored session."""
    name = read_start()
    return ok(sessions.start(get_db(), name))


@bp.post("/save")
def save():
    """Replace the participant's saved state with the one sent."""
    name, state = read_save()
    sessions.save(get_db(), name, state)
    return ok(None)
