"""The participant register: the usernames a researcher admitted to the study.

Off unless PARTICIPANT_REGISTER is on. Then a participant route that names a participant
(/paint/start, /paint/save, and /generate when it is given a username) answers 403
`username: ... is not registered` for a name that is not in the register, so a stranger
cannot create participants or write to one; /paint/start creates a participant only for a
registered name. Researchers keep the register with `flask participants add|remove|list`
(apps.paint.cli), and it lives in MongoDB, one document per name with the name as `_id`.
Names are read as the API reads them (core.validation.Username): `add " alice"` registers
`alice`, the name the client's " alice" will be looked up as.
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from flask import current_app
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from apps.paint.sessions import StartBody
from core import validation as v
from core.db import get_db
from core.security import Forbidden

COLLECTION = "participant_register"


class NotRegistered(Forbidden):
    """The register is on and the username is not in it."""


def read_names(raw: Iterable[str]) -> list[str]:
    """Return each name as the API reads it, or raise BadInput naming the first wrong one."""
    return [v.parse(StartBody, {"username": name}).username for name in raw]


def add(db: Database, names: Iterable[str]) -> list[str]:
    """Register `names` (read as the API reads them); return those that were not registered yet."""
    added = []
    for name in dict.fromkeys(read_names(names)):
        try:
            db[COLLECTION].insert_one({"_id": name, "addedAt": datetime.now(timezone.utc)})
        except DuplicateKeyError:
            continue
        added.append(name)
    return added


def remove(db: Database, names: Iterable[str]) -> list[str]:
    """Take `names` out of the register; return those that were in it."""
    return [name for name in dict.fromkeys(read_names(names))
            if db[COLLECTION].delete_one({"_id": name}).deleted_count]


def names(db: Database) -> list[str]:
    """Return every registered name, sorted."""
    return sorted(doc["_id"] for doc in db[COLLECTION].find({}, {"_id": 1}))


def admit(username: str | None) -> None:
    """Raise NotRegistered when the register is on and `username` (if any) is not in it."""
    if username is None or not current_app.config["PARTICIPANT_REGISTER"]:
        return
    if get_db()[COLLECTION].find_one({"_id": username}, {"_id": 1}) is None:
        raise NotRegistered(f"username: {username!r} is not registered for this study; ask the researcher "
                            "to register it")
