"""Session routes of the sketching app: start and save for participants, the save history for researchers."""
from __future__ import annotations

from flask import Blueprint, current_app, request

from apps import attribution
from apps.paint import cli, register, sessions
from core import request_body
from core import validation as v
from core.db import get_db
from core.envelope import ok
from core.security import participant, researcher

# cli_group=None: the study commands sit at the top level (`flask export-study`).
bp = Blueprint("paint", __name__, url_prefix="/paint", cli_group=None)
cli.register(bp)
SIGHTINGS = "paint_sightings"  # the app's attribution.Sightings


@bp.record_once
def _give_state(state) -> None:
    """Give the app what it saw of its participants' clients."""
    state.app.extensions[SIGHTINGS] = attribution.Sightings()


def _seen(db, username: str) -> None:
    """Note the client the participant's request came from: evidence for their generations."""
    sightings: attribution.Sightings = current_app.extensions[SIGHTINGS]
    sightings.saw(db, username)


@bp.post("/start")
@participant
def start():
    """Create the participant on first visit and return the stored session."""
    body = v.body(sessions.StartBody)
    register.admit(body.username)
    db = get_db()
    session = sessions.start(db, body.username)
    _seen(db, body.username)
    return ok(session)


@bp.post("/save")
@participant
def save():
    """Make the state sent the participant's current one, keeping the previous ones."""
    arrival = request_body.arrival()  # before the body is read: of two saves, the one sent last stays current
    # A save carries the whole session, every sketch as a data URI: ~100 MB for 200 sketches.
    request.max_content_length = current_app.config["SAVE_MAX_CONTENT_LENGTH"]
    body = v.body(sessions.SaveBody)
    register.admit(body.username)
    db = get_db()
    sessions.save(db, body.username, body.data, arrival)
    _seen(db, body.username)
    return ok(None)


@bp.get("/history")
@researcher
def history():
    """List the participant's saves, newest first."""
    return ok(sessions.saves(get_db(), v.parse_query(sessions.HistoryQuery, request.args)))


@bp.get("/history/<entry_id>")
@researcher
def saved_state(entry_id: str):
    """Return one past state of a participant, in the shape of /paint/start."""
    return ok(sessions.saved_state(get_db(), v.object_id(entry_id, "a save")))
