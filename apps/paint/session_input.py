"""Validation of the session routes' bodies, field by field, before anything is stored."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from flask import current_app, request

from apps.paint.stages import SCHEME_FIELDS, STAGES
from core import validation as v
from core.json_codec import json_object
from core.envelope import BadInput

MAX_TASK = 2000
MAX_SCHEMES_PER_STAGE = 1000
DEFAULT_HISTORY_LIMIT = 50
MAX_HISTORY_LIMIT = 1000


@dataclass(frozen=True)
class SavedState:
    """What one save of a participant carries."""

    design_task: str
    current_stage: str
    schemes: dict[str, list[dict[str, Any]]]  # participant field -> list of opaque schemes


def read_start() -> str:
    """Return the username of a /paint/start body."""
    body = json_object()
    return v.username(body.get("username"))


def _schemes(value: Any, field: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    items = v.array(value, field, max_items=MAX_SCHEMES_PER_STAGE)
    for index, scheme in enumerate(items):
        v.storable(v.obj(scheme, f"{field}[{index}]"), f"{field}[{index}]")
    return items


def read_save() -> tuple[str, SavedState]:
    """Return the username and the state of a /paint/save body, allowing it the larger save limit."""
    # A save carries the whole session, every sketch as a data URI: ~100 MB for 200 sketches.
    request.max_content_length = current_app.config["SAVE_MAX_CONTENT_LENGTH"]
    body = json_object()
    name = v.username(body.get("username"))
    data = v.obj(body.get("data"), "data")
    by_stage = v.obj(data.get("designSchemes"), "data.designSchemes")
    unknown = sorted(set(by_stage) - set(STAGES))
    if unknown:
        raise BadInput("data.designSchemes", f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    schemes = {
        field: _schemes(by_stage.get(stage), f"data.designSchemes.{stage}")
        for stage, field in SCHEME_FIELDS.items()
    }
    state = SavedState(
        design_task=v.string(data.get("designTask"), "data.designTask", max_length=MAX_TASK),
        current_stage=v.one_of(data.get("currentStage"), "data.currentStage", STAGES),
        schemes=schemes,
    )
    return name, state


def read_history_query(args: Mapping[str, str]) -> tuple[str, int]:
    """Return the username and the limit of a GET /paint/history query."""
    unknown = sorted(set(args) - {"username", "limit"})
    if unknown:
        raise BadInput(unknown[0], "is not a parameter; use username and limit")
    if "username" not in args:
        raise BadInput("username", "is required")
    name = v.username(args["username"])
    limit = DEFAULT_HISTORY_LIMIT
    if "limit" in args:
        try:
            limit = int(args["limit"].strip())
        except ValueError:
            raise BadInput("limit", "must be an integer") from None
        v.integer(limit, "limit", low=1, high=MAX_HISTORY_LIMIT)
    return name, limit


def read_save_id(raw: str) -> ObjectId:
    """Return the id of a saved state in a GET /paint/history/<id> path."""
    try:
        return ObjectId(raw)
    except (InvalidId, TypeError):
        raise BadInput("id", "must be a save id of 24 hex characters") from None
