"""Participant sessions: a participant's stage, design task and sketches, and every save of them.

A participant is one small document in `participants`, unique by username: the current
stage, the design task and `schemeRefs`, for each stage's list the ids of its schemes in
apps.paint.scheme_store. POST /paint/start answers it (creating it on first visit) as a
`Session`, the seven keys the client spreads into its state; POST /paint/save replaces the
state and keeps every save in `session_history`, which GET /paint/history lists.

A save is placed in order as it arrives, before its body is read (core.request_body.arrival:
when its head came in, on the wall clock, so the processes of a deployment agree). Once read
and its sketches stored, it takes the next number from the participant's `revisionSeq`,
writes its history entry (pending), then sets the participant's state in one atomic
update that only applies while that state arrived earlier, and last marks the entry
committed. An entry is visible when it is committed or is the participant's current
revision, so a failure at any step leaves either the old state with no visible entry, or
the new state with its entry. Of two overlapping saves both are kept and the one that
arrived last stays current, however long the other took to be read and stored; the
history lists saves by arrival too, newest first.

Participants of the old format, their schemes inline, still load; their next save
records their old state as revision 0 and converts them.

A save is evidence of whose generations were whose (apps.attribution): before its state
is committed, the sketch images, notes and task it adds are marked as the participant's,
and the generation records they match are attributed again, so a client that saves a
sketch after sending it to /generate still has that generation attributed.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args

from bson import ObjectId
from pydantic import ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DocumentTooLarge, DuplicateKeyError, PyMongoError
from typing_extensions import TypeAliasType

from apps import attribution, records
from apps.attribution import Marks
from apps.paint import scheme_store
from apps.paint.scheme_store import SchemeLists, SchemeRefs
from core.db import Document, Id
from core.image_store import ImageDecodeError, decode_image
from core.envelope import CODE_STORAGE, ApiError, NotFound
from core.validation import FROM_QUERY, Body, StorableObject, Username

log = logging.getLogger(__name__)

# The study's stages, exactly as the web client spells them.
StageName = Literal["准备", "快速发散", "深入发散", "收敛", "完成", "禁止"]
STAGES: tuple[str, ...] = get_args(StageName)
Stage = TypeAliasType("Stage", Annotated[StageName, Field(description=(
    "A study stage, as the client spells it: 准备 (not ready), 快速发散 (rapid divergence), 深入发散 (deep "
    "divergence), 收敛 (convergence), 完成 (finished), 禁止 (disabled)."))])
NOT_READY, RAPID, DEEP, CONVERGENCE, FINISHED, DISABLED = STAGES
# The stages whose sketches the client saves, and the field of the session that holds each list.
SCHEME_FIELDS = {RAPID: "rapidDivergenceSchemes", DEEP: "deepDivergenceSchemes", CONVERGENCE: "convergenceSchemes"}

PARTICIPANTS = "participants"
HISTORY = "session_history"
# Entry statuses as strings: nx-27017 turns booleans written by $set into integers.
Status = Literal["pending", "committed"]
PENDING, COMMITTED = get_args(Status)

MAX_TASK = 2000
MAX_SCHEMES_PER_STAGE = 1000
DEFAULT_HISTORY_LIMIT = 50
MAX_HISTORY_LIMIT = 1000


class StartBody(Body):
    """The body of POST /paint/start."""

    username: Username


# A scheme is the client's opaque JSON, stored as sent and answered unchanged.
Scheme = TypeAliasType("Scheme", Annotated[StorableObject, Field(
    description="One sketch as the client's canvas produced it. The server stores it as opaque JSON and hands "
                "it back unchanged.",
    examples=[{"name": "", "canvasSvg": "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>",
               "canvasImage": "data:image/png;base64,iVBORw0KGgo...",
               "paths": [{"drawMode": True, "strokeColor": "#000", "strokeWidth": 5, "paths": [{"x": 1.5, "y": 2}]}],
               "texts": [{"text": "可折叠", "position": {"x": 10, "y": 20}}]}])])
SchemeList = Annotated[list[Scheme], Field(max_length=MAX_SCHEMES_PER_STAGE)]


def _only_stages(schema: dict[str, Any]) -> None:
    """Say in the JSON schema what `_known_stages` checks: stage names only, the unsketched ones ignored."""
    schema["additionalProperties"] = False
    for stage in STAGES:
        schema["properties"].setdefault(stage, {"description": "Ignored (the client sends null)."})


class DesignSchemes(Body):
    """The schemes of each stage, under the client's stage names; null or absent means none."""

    model_config = ConfigDict(json_schema_extra=_only_stages)

    rapid: SchemeList | None = Field(None, alias=RAPID)
    deep: SchemeList | None = Field(None, alias=DEEP)
    convergence: SchemeList | None = Field(None, alias=CONVERGENCE)

    @model_validator(mode="before")
    @classmethod
    def _known_stages(cls, value: Any) -> Any:
        """Refuse names that are no stage; the stages without sketches are read as nothing."""
        unknown = sorted(set(value) - set(STAGES)) if isinstance(value, dict) else []
        if unknown:
            raise PydanticCustomError("unknown_stage", "unknown stage {stage}; stages are {stages}",
                                      {"stage": repr(unknown[0]), "stages": ", ".join(STAGES)})
        return value

    def by_field(self) -> SchemeLists:
        """Return the lists under the session's field names."""
        return {SCHEME_FIELDS[RAPID]: self.rapid or [], SCHEME_FIELDS[DEEP]: self.deep or [],
                SCHEME_FIELDS[CONVERGENCE]: self.convergence or []}


class SavedState(Body):
    """What one save carries: every stage's schemes, the design task and the current stage."""

    design_schemes: DesignSchemes
    design_task: Annotated[str, Field(max_length=MAX_TASK)]
    current_stage: Stage


class SaveBody(Body):
    """The body of POST /paint/save: the participant's whole state, every sketch in it."""

    username: Username
    data: SavedState


class HistoryQuery(Body):
    """The query of GET /paint/history."""

    username: Username
    limit: Annotated[int, Field(ge=1, le=MAX_HISTORY_LIMIT), FROM_QUERY] = DEFAULT_HISTORY_LIMIT


class SessionState(Document):
    """The state one save sets: the participant holds the current one, each history entry its own."""

    current_stage: str
    design_task: str
    scheme_refs: SchemeRefs


STATE_FIELDS = set(SessionState.model_fields)


class HistoryEntry(SessionState):
    """A document of `session_history`: one save of a participant, visible once committed."""

    id: Id = Field(default_factory=ObjectId, alias="_id")
    participant_id: Id
    username: str
    revision: int
    arrival: int = 0  # when it arrived (core.request_body.arrival); older entries have none
    kind: Literal["save", "legacy"] = "save"  # legacy: the state of an old-format participant
    saved_at: datetime
    status: Status = PENDING


class Participant(Document):
    """A document of `participants`, either format: `schemeRefs`, or the old one's lists inline."""

    id: Id = Field(alias="_id")
    username: str
    current_stage: str = NOT_READY
    design_task: str = ""
    scheme_refs: SchemeRefs | None = None
    inline: SchemeLists | None = None  # the old format's lists, not stored under this name
    revision: int = 0  # the revision whose state it holds (old documents have none: 0)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _gather_inline(cls, doc: Any) -> Any:
        """Gather the lists of an old-format document, which lie beside its other fields."""
        if isinstance(doc, dict) and "schemeRefs" not in doc:
            return {**doc, "inline": {field: doc.get(field) or [] for field in SCHEME_FIELDS.values()}}
        return doc


class SaveNotStored(ApiError):
    """A save failed part-way through; the previous state is still the current one."""

    status = 503
    code = CODE_STORAGE


def create_indexes(db: Database) -> None:
    """Make usernames unique, so simultaneous first visits create one participant; give each revision one entry."""
    db[PARTICIPANTS].create_index([("username", ASCENDING)], unique=True, name="username_unique")
    db[HISTORY].create_index([("username", ASCENDING), ("revision", ASCENDING)],
                             unique=True, name="username_revision")
    db[HISTORY].create_index([("username", ASCENDING), ("arrival", DESCENDING)], name="username_arrival")


def _participant(db: Database, match: dict[str, Any]) -> Participant | None:
    doc = db[PARTICIPANTS].find_one(match)
    return None if doc is None else Participant.model_validate(doc)


def _create(db: Database, username: str) -> Participant:
    doc = {"username": username, "currentStage": NOT_READY, "designTask": "",
           "schemeRefs": {field: [] for field in SCHEME_FIELDS.values()},
           "revision": 0, "revisionSeq": 0, "createdAt": datetime.now(timezone.utc)}
    try:
        db[PARTICIPANTS].insert_one(doc)
    except DuplicateKeyError:
        # Two first visits raced and the other one inserted first: its document is the one.
        found = _participant(db, {"username": username})
        if found is None:
            raise
        return found
    return Participant.model_validate(doc)


def _lists(db: Database, refs: SchemeRefs) -> SchemeLists:
    return scheme_store.load(db, {field: refs.get(field) or [] for field in SCHEME_FIELDS.values()})


def _saved_under(stage: str) -> Any:
    return Field(alias=SCHEME_FIELDS[stage], description=f"The schemes saved under {stage}.")


class Session(Document):
    """POST /paint/start: the participant's stored session, the seven keys the client spreads into its state."""

    model_config = ConfigDict(extra="forbid")

    id: Id = Field(alias="_id")
    username: str
    current_stage: Stage
    design_task: str
    rapid: list[Scheme] = _saved_under(RAPID)
    deep: list[Scheme] = _saved_under(DEEP)
    convergence: list[Scheme] = _saved_under(CONVERGENCE)


def _session(participant: Participant, stage: str, task: str, lists: SchemeLists) -> dict[str, Any]:
    """Return the seven keys the client spreads into its state."""
    # Neither validated nor dumped, which would walk every scheme: they were checked when saved,
    # and hold megabytes of JSON written already. The values as they are, under the client's names.
    session = Session.model_construct(id=participant.id, username=participant.username, current_stage=stage,
                                      design_task=task, **lists)
    return {Session.model_fields[name].alias: value for name, value in session}


def start(db: Database, username: str) -> dict[str, Any]:
    """Return the session of the participant `username`, creating the participant on first visit."""
    # Found in one round trip on every visit but the first, which alone inserts.
    participant = _participant(db, {"username": username}) or _create(db, username)
    lists = participant.inline if participant.inline is not None else _lists(db, participant.scheme_refs or {})
    return _session(participant, participant.current_stage, participant.design_task, lists)


def _next_revision(db: Database, participant_id: ObjectId) -> int:
    counter = db[PARTICIPANTS].find_one_and_update(
        {"_id": participant_id},
        # $max gives older documents these fields, so the guard in _set_state can match them.
        {"$inc": {"revisionSeq": 1}, "$max": {"revision": 0, "arrival": 0}},
        projection={"revisionSeq": 1},
        return_document=ReturnDocument.AFTER,
    )
    if counter is None:
        raise NotFound("the participant was removed while saving; call /paint/start first")
    return counter["revisionSeq"]


def _set_state(db: Database, participant_id: ObjectId, entry: HistoryEntry) -> int | None:
    """Make `entry` the participant's state unless one that arrived later already is; return the revision replaced."""
    before = db[PARTICIPANTS].find_one_and_update(
        {"_id": participant_id, "arrival": {"$lt": entry.arrival}},
        {"$set": {**entry.model_dump(by_alias=True, include=STATE_FIELDS), "revision": entry.revision,
                  "arrival": entry.arrival, "historyId": entry.id, "updatedAt": entry.saved_at},
         "$unset": {field: "" for field in SCHEME_FIELDS.values()}},  # the old format's inline lists
        projection={"revision": 1},
        return_document=ReturnDocument.BEFORE,
    )
    return None if before is None else before.get("revision", 0)


def _mark_committed(db: Database, username: str, revisions: list[int]) -> None:
    db[HISTORY].update_many({"username": username, "revision": {"$in": revisions}},
                            {"$set": {"status": COMMITTED}})


def _commit(db: Database, participant: Participant, state: SessionState, arrival: int) -> int:
    """Record `state` as the participant's next save, current unless one that arrived later is; return its revision."""
    revision = _next_revision(db, participant.id)
    entry = HistoryEntry(**state.model_dump(), participant_id=participant.id, username=participant.username,
                         revision=revision, arrival=arrival, saved_at=datetime.now(timezone.utc))
    db[HISTORY].insert_one(entry.model_dump(by_alias=True))
    replaced = _set_state(db, participant.id, entry)
    if replaced is None:
        # A save that arrived later is current already: this one still belongs in the history.
        _mark_committed(db, participant.username, [revision])
        return revision
    try:
        # Also settle the revision this one replaced, in case its own marking failed.
        _mark_committed(db, participant.username, [revision, replaced])
    except Exception:  # the state is saved; visibility by revision covers the entry
        log.warning("saved revision %d of %s but could not mark it committed", revision, participant.id,
                    exc_info=True)
    return revision


def _keep_legacy_state(db: Database, participant: Participant, lists: SchemeLists) -> None:
    """Record an old-format participant's inline state as its revision 0, once, before it is replaced."""
    if not any(lists.values()) and not participant.design_task:
        return  # nothing was ever saved: no old state to keep
    entry = HistoryEntry(current_stage=participant.current_stage, design_task=participant.design_task,
                         scheme_refs=scheme_store.store(db, lists), participant_id=participant.id,
                         username=participant.username, revision=0, kind="legacy", status=COMMITTED,
                         saved_at=participant.updated_at or participant.created_at or datetime.now(timezone.utc))
    try:
        db[HISTORY].insert_one(entry.model_dump(by_alias=True))
    except DuplicateKeyError:
        return  # a concurrent save recorded the same old state first
    log.info("converting participant %s from the one-document format", participant.id)


def _sketch_images(scheme: dict[str, Any]) -> Iterator[str]:
    """Yield the SHA-256 of each image a scheme holds as a data URI (the client's canvasImage)."""
    for value in scheme.values():
        if isinstance(value, str) and value.startswith("data:image/"):
            try:
                yield decode_image(value).sha256  # the bytes, decoded as /generate decodes a sketch
            except ImageDecodeError:
                continue


def _notes(scheme: dict[str, Any]) -> list[str]:
    """Return the notes of a scheme: the client's `texts`, `[{"text": ..., "position": ...}]`."""
    texts = scheme.get("texts")
    return [t["text"] for t in texts if isinstance(t, dict) and isinstance(t.get("text"), str)] \
        if isinstance(texts, list) else []


def _marks(participant: Participant, state: SavedState, refs: SchemeRefs) -> Marks:
    """Return what a save adds to its participant's marks: its new schemes' images and notes, a new task."""
    before = {sid for ids in (participant.scheme_refs or {}).values() for sid in ids}
    added = {sid: scheme for field, schemes in state.design_schemes.by_field().items()
             for sid, scheme in zip(refs[field], schemes, strict=True) if sid not in before}
    task = attribution.task_key(state.design_task) if state.design_task != participant.design_task else None
    return Marks(sketches=[key for scheme in added.values() for key in _sketch_images(scheme)],
                 texts=[key for scheme in added.values() if (key := attribution.notes_key(_notes(scheme)))],
                 tasks=[task] if task else [])


def _stored_marks(form: dict[str, Any]) -> Marks:
    """Return the marks of one stored scheme: its moved data-URI images by their hash, its inline ones and notes."""
    scheme = form["scheme"]
    moved = set(form.get("moved", []))
    images = [scheme[key]["sha256"] for key in moved
              if scheme[key].get("kind") == "dataUri" and scheme[key]["contentType"].startswith("image/")]
    kept = {key: value for key, value in scheme.items() if key not in moved}
    notes = attribution.notes_key(_notes(kept))
    return Marks(sketches=[*images, *_sketch_images(kept)], texts=[notes] if notes else [])


def mark_history(db: Database) -> int:
    """Mark what every visible save of every participant shows of them (for saves older than attribution)."""
    marked = 0
    for doc in db[PARTICIPANTS].find({}, {"_id": 1, "username": 1, "revision": 1, "schemeRefs": 1}):
        participant = Participant.model_validate(doc)
        entries = list(db[HISTORY].find(visible(participant), {"schemeRefs": 1, "designTask": 1}))
        ids = {sid for entry in entries for sids in entry["schemeRefs"].values() for sid in sids}
        forms = scheme_store.stored_forms(db, ids).values()
        found = [_stored_marks(form) for form in forms]
        tasks = {key for entry in entries if (key := attribution.task_key(entry.get("designTask")))}
        marks = Marks(sketches=[key for m in found for key in m.sketches], texts=[key for m in found for key in m.texts],
                      tasks=sorted(tasks))
        attribution.mark(db, participant.username, marks)
        marked += bool(marks)
    return marked


def save(db: Database, username: str, state: SavedState, arrival: int) -> int:
    """Store `state` in the history, and as the current session unless a save that arrived later is; return its revision.

    `arrival` is when the save arrived (core.request_body.arrival, read before its body).
    """
    participant = _participant(db, {"username": username})
    if participant is None:
        raise NotFound(f"participant {username!r} does not exist; call /paint/start first")
    try:
        refs = scheme_store.store(db, state.design_schemes.by_field())
        if participant.inline is not None:
            _keep_legacy_state(db, participant, participant.inline)
        # Before the commit: a save that fails after it is sent again, its evidence still new.
        marks = _marks(participant, state, refs)
        if marks:
            attribution.mark(db, username, marks)
            records.reattribute(db, marks)
        return _commit(db, participant, SessionState(current_stage=state.current_stage,
                                                     design_task=state.design_task, scheme_refs=refs), arrival)
    except (ConnectionFailure, DocumentTooLarge):
        raise  # the envelope already says these clearly
    except PyMongoError as error:
        log.warning("save of %r failed: %s", username, type(error).__name__)
        raise SaveNotStored("the save was not stored because the database refused a write; "
                            "the previous state is kept, send it again") from error


def visible(participant: Participant) -> dict[str, Any]:
    """Return the filter of a participant's visible history entries."""
    # By username, which is unique and never changes: nx-27017 cannot match ObjectId fields but _id.
    return {"username": participant.username,
            "$or": [{"status": COMMITTED}, {"revision": participant.revision}]}


class StageCounts(Document):
    """How many schemes each sketched stage held."""

    rapid: int = Field(ge=0, alias=RAPID)
    deep: int = Field(ge=0, alias=DEEP)
    convergence: int = Field(ge=0, alias=CONVERGENCE)


class SaveSummary(Document):
    """What the history list shows of one save."""

    id: Id
    revision: int = Field(ge=0)
    saved_at: datetime
    kind: Literal["save", "legacy"] = Field(description="legacy: the state of a participant stored in the old "
                                                        "one-document format")
    current_stage: Stage
    design_task: str
    counts: StageCounts

    @classmethod
    def of(cls, entry: HistoryEntry) -> SaveSummary:
        """Return the summary of one history entry."""
        held = {stage: len(entry.scheme_refs.get(field) or []) for stage, field in SCHEME_FIELDS.items()}
        return cls(id=entry.id, revision=entry.revision, saved_at=entry.saved_at, kind=entry.kind,
                   current_stage=entry.current_stage, design_task=entry.design_task,
                   counts=StageCounts.model_validate(held))


class History(Document):
    """GET /paint/history: a participant's visible saves, newest first."""

    username: str
    saves: list[SaveSummary]


def saves(db: Database, query: HistoryQuery) -> dict[str, Any]:
    """Return the participant's visible saves, newest first, at most `query.limit` of them."""
    participant = _participant(db, {"username": query.username})
    if participant is None:
        raise NotFound(f"participant {query.username!r} does not exist")
    newest_first = [("arrival", DESCENDING), ("revision", DESCENDING)]  # entries without an arrival are older
    found = db[HISTORY].find(visible(participant)).sort(newest_first).limit(query.limit)
    history = History(username=query.username, saves=[SaveSummary.of(HistoryEntry.model_validate(doc)) for doc in found])
    return history.model_dump(by_alias=True)


def saved_state(db: Database, entry_id: ObjectId) -> dict[str, Any]:
    """Return one past state, if visible, in the shape of /paint/start."""
    doc = db[HISTORY].find_one({"_id": entry_id})
    if doc is not None:
        entry = HistoryEntry.model_validate(doc)
        participant = _participant(db, {"_id": entry.participant_id})
        if participant is not None and (entry.status == COMMITTED or entry.revision == participant.revision):
            return _session(participant, entry.current_stage, entry.design_task, _lists(db, entry.scheme_refs))
    raise NotFound(f"no saved state has id {entry_id}")
