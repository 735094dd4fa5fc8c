"""Participant session routes of the sketching app: /paint/start, /paint/save and the save history."""
from __future__ import annotations

from flask import Blueprint, request

from apps.paint import cli, sessions
from apps.paint.session_input import read_history_query, read_save, read_save_id, read_start
from core.db import get_db
from core.envelope import ok

# cli_group=None: the study commands sit at the top level (`flask export-study`).
bp = Blueprint("paint", __name__, url_prefix="/paint", cli_group=None)
cli.register(bp)


@bp.post("/start")
def start():
    """Create the participant on first visit and return the stored session."""
    name = read_start()
    return ok(sessions.start(get_db(), name))


@bp.post("/save")
def save():
    """Make the state sent the participant's current one, keeping the previous ones."""
    name, state = read_save()
    sessions.save(get_db(), name, state)
    return ok(None)


@bp.get("/history")
def history():
    """List the participant's saves, newest first."""
    name, limit = read_history_query(request.args)
    return ok(sessions.saves(get_db(), name, limit))


@bp.get("/history/<entry_id>")
def saved_state(entry_id: str):
    """Return one past state of a participant, in the shape of /paint/start."""
    return ok(sessions.saved_state(get_db(), read_save_id(entry_id)))
