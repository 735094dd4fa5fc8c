"""What the dashboard shows of participants: the overview's rows, a participant's timeline, a scheme's history.

Read from the collections apps.paint.sessions and scheme_store write, through their
models and filters (a save counts when `sessions.visible`), and from the generation
records by their attribution (`participant`, apps.attribution). A sketch is shown by its canvas image: the
image-store blob its stored scheme refers to (a data URI moved out as its bytes), or the
small data URI kept inline. Times are made UTC-aware when read, since the store gives
back some as naive datetimes and some, written by `$set`, as ISO strings.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel
from pymongo import ASCENDING
from pymongo.database import Database

from apps.paint import scheme_store
from apps.paint.pipelines import PIPELINES
from apps.paint.sessions import HISTORY, PARTICIPANTS, SCHEME_FIELDS, STAGES, HistoryEntry, Participant, visible
from apps.records import COLLECTION, of_participant
from apps.study.cards import Card, Input, cards_of, image_key, inputs_of
from core.envelope import NotFound

GENERATION_TYPES = tuple(sorted(PIPELINES))
STAGE_OF_FIELD = {field: stage for stage, field in SCHEME_FIELDS.items()}
ARRIVAL_ORDER = [("arrival", ASCENDING), ("revision", ASCENDING)]  # entries without an arrival are older
SKETCH_IMAGE = "canvasImage"  # the key of a scheme that holds its drawing, as the client names it


def utc(moment: datetime | str | None) -> datetime | None:
    """Return a stored time as an aware UTC datetime (naive ones are UTC), or None."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def find_participant(db: Database, username: str) -> Participant:
    """Return the participant `username`, or raise NotFound."""
    doc = db[PARTICIPANTS].find_one({"username": username})
    if doc is None:
        raise NotFound(f"no participant is called {username!r}")
    return Participant.model_validate(doc)


def _current_lists(participant: Participant) -> dict[str, list[Any]]:
    """Return the participant's current lists: scheme ids, or an old-format document's inline schemes."""
    return participant.inline if participant.inline is not None else participant.scheme_refs or {}


# -- the overview ----------------------------------------------------------------------------
class ParticipantRow(BaseModel):
    """One participant in the overview."""

    username: str
    stage: str
    task: str
    saves: int
    sketches: int
    by_type: dict[int, int]
    generations: int
    methods: dict[str, int]  # how many generations each attribution method gave them
    last_activity: datetime | None


class Overview(BaseModel):
    """Every participant, by username, and the generations attributed to none of them, by method."""

    rows: list[ParticipantRow]
    unattributed: dict[str, int]
    types: tuple[int, ...] = GENERATION_TYPES


def generations_of(db: Database, username: str, *, type_: int | None = None,
                   fields: dict[str, int] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the records of the generations attributed to `username` (of one type, if given), oldest first."""
    match = {**of_participant(username), **({} if type_ is None else {"type": type_})}
    yield from db[COLLECTION].find(match, fields).sort([("createdAt", ASCENDING), ("_id", ASCENDING)])


def method_of(record: dict[str, Any]) -> str:
    """Return how a record's participant was found (apps.attribution's methods)."""
    return record["participant"]["method"]


def participant_row(db: Database, participant: Participant) -> ParticipantRow:
    """Return the overview's row of one participant."""
    records = list(generations_of(db, participant.username, fields={"type": 1, "finishedAt": 1, "participant": 1}))
    by_type = Counter(record.get("type") for record in records)
    moments = [utc(participant.updated_at or participant.created_at),
               *(utc(record.get("finishedAt")) for record in records)]
    return ParticipantRow(
        username=participant.username, stage=participant.current_stage, task=participant.design_task,
        saves=db[HISTORY].count_documents(visible(participant)),
        sketches=sum(len(ids or []) for ids in _current_lists(participant).values()),
        by_type={type_: by_type.get(type_, 0) for type_ in GENERATION_TYPES}, generations=len(records),
        methods=dict(sorted(Counter(method_of(record) for record in records).items())),
        last_activity=max((moment for moment in moments if moment is not None), default=None))


def overview(db: Database) -> Overview:
    """Return the overview of every participant, and how many generations are attributed to no one."""
    participants = [Participant.model_validate(doc) for doc in db[PARTICIPANTS].find().sort("username", ASCENDING)]
    return Overview(rows=[participant_row(db, participant) for participant in participants],
                    unattributed=dict(sorted(Counter(method_of(record) for record in db[COLLECTION].find(
                        of_participant(None), {"participant": 1})).items())))


# -- sketches ------------------------------------------------------------------------------
class Sketch(BaseModel):
    """One scheme of a save, as a thumbnail shows it: its drawing by SHA-256, or a small inline data URI."""

    stage: str
    index: int
    scheme_id: str
    name: str
    image: str | None
    inline_image: str | None
    texts: list[str]
    changed: bool = False  # not the scheme this position held at the save before


def _texts(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []  # absent, or a long list moved out to a blob: not worth a page's weight
    return [item["text"] for item in value if isinstance(item, dict) and isinstance(item.get("text"), str)]


def _sketch(stage: str, index: int, scheme_id: str, form: dict[str, Any] | None) -> Sketch:
    scheme = (form or {}).get("scheme", {})
    drawing = scheme.get(SKETCH_IMAGE)
    moved = SKETCH_IMAGE in (form or {}).get("moved", []) and isinstance(drawing, dict) \
        and drawing.get("kind") == "dataUri"
    inline = drawing if isinstance(drawing, str) and drawing.startswith("data:image/") else None
    name = scheme.get("name")
    return Sketch(stage=stage, index=index, scheme_id=scheme_id, name=name if isinstance(name, str) else "",
                  image=image_key(drawing) if moved else None, inline_image=inline, texts=_texts(scheme.get("texts")))


def _forms(db: Database, entries: list[HistoryEntry]) -> dict[str, dict[str, Any]]:
    return scheme_store.stored_forms(db, (sid for entry in entries for ids in entry.scheme_refs.values()
                                          for sid in ids or []))


def _sketches(entry: HistoryEntry, forms: dict[str, dict[str, Any]],
              before: HistoryEntry | None) -> list[Sketch]:
    sketches = []
    for field, ids in entry.scheme_refs.items():
        earlier = (before.scheme_refs.get(field) or []) if before is not None else []
        for index, sid in enumerate(ids or []):
            sketch = _sketch(STAGE_OF_FIELD.get(field, field), index, sid, forms.get(sid))
            sketch.changed = index >= len(earlier) or earlier[index] != sid
            sketches.append(sketch)
    order = {stage: place for place, stage in enumerate(STAGES)}
    return sorted(sketches, key=lambda sketch: order.get(sketch.stage, len(order)))


def _saves(db: Database, participant: Participant) -> list[HistoryEntry]:
    """Return the participant's visible saves in the order they arrived."""
    return [HistoryEntry.model_validate(doc) for doc in db[HISTORY].find(visible(participant)).sort(ARRIVAL_ORDER)]


# -- the timeline --------------------------------------------------------------------------
class SaveEvent(BaseModel):
    """One save on a participant's timeline, with the sketches it held."""

    kind: Literal["save"] = "save"
    at: datetime
    revision: int
    stage: str
    task: str
    legacy: bool
    sketches: list[Sketch]


class GenerationEvent(BaseModel):
    """One generation on a participant's timeline: what was asked and the cards it showed."""

    kind: Literal["generation"] = "generation"
    at: datetime
    id: str
    type: int
    stage: str | None  # the stage of the last save before it
    status: str
    error: str | None
    method: str
    duration_ms: int | None
    input: Input
    cards: list[Card]


class Timeline(BaseModel):
    """A participant's saves and generations in time order, as filtered."""

    participant: ParticipantRow
    events: list[SaveEvent | GenerationEvent]
    stages: tuple[str, ...]
    types: tuple[int, ...]


def _generation(record: dict[str, Any], stage: str | None) -> GenerationEvent:
    error = record.get("error")
    return GenerationEvent(
        at=utc(record["createdAt"]), id=str(record["_id"]), type=record.get("type", -1), stage=stage,
        status=record.get("status", ""), error=error.get("message") if isinstance(error, dict) else None,
        method=method_of(record), duration_ms=record.get("durationMs"), input=inputs_of(record.get("input")),
        cards=cards_of(record.get("result")))


def timeline(db: Database, username: str, *, stage: str | None = None, type_: int | None = None) -> Timeline:
    """Return the participant's saves and generations merged in time order, kept to `stage` and `type_` if given.

    A generation's stage is that of the last save before it; with `type_` only generations are shown.
    """
    participant = find_participant(db, username)
    entries = _saves(db, participant)
    forms = _forms(db, entries)
    saves = [SaveEvent(at=utc(entry.saved_at), revision=entry.revision, stage=entry.current_stage,
                       task=entry.design_task, legacy=entry.kind == "legacy",
                       sketches=_sketches(entry, forms, entries[place - 1] if place else None))
             for place, entry in enumerate(entries)]
    events: list[SaveEvent | GenerationEvent] = []
    waiting = iter(saves)
    upcoming = next(waiting, None)
    current: str | None = None
    # Both lists are in order already: merged by time, each keeps its own order.
    for record in generations_of(db, username, type_=type_):
        created = utc(record["createdAt"])
        while upcoming is not None and upcoming.at <= created:
            events.append(upcoming)
            current, upcoming = upcoming.stage, next(waiting, None)
        events.append(_generation(record, current))
    if upcoming is not None:
        events.extend([upcoming, *waiting])
    if type_ is not None:
        events = [event for event in events if event.kind == "generation"]
    if stage is not None:
        events = [event for event in events if event.stage == stage]
    return Timeline(participant=participant_row(db, participant), events=events, stages=STAGES,
                    types=GENERATION_TYPES)


# -- one scheme's history ------------------------------------------------------------------
class SchemeVersion(BaseModel):
    """The scheme at one position after a save that changed it (None: the save held no scheme there)."""

    at: datetime
    revision: int
    sketch: Sketch | None


def scheme_history(db: Database, username: str, stage: str, index: int) -> list[SchemeVersion]:
    """Return the scheme at `index` of `stage`'s list at each save where it changed, oldest first."""
    if stage not in SCHEME_FIELDS:
        raise NotFound(f"{stage!r} is no stage with sketches; those are {', '.join(SCHEME_FIELDS)}")
    field = SCHEME_FIELDS[stage]
    entries = _saves(db, find_participant(db, username))
    held = [(entry, (entry.scheme_refs.get(field) or [])[index:index + 1]) for entry in entries]
    forms = scheme_store.stored_forms(db, (ids[0] for _, ids in held if ids))
    versions, last = [], None
    for entry, ids in held:
        sid = ids[0] if ids else None
        if sid == last:
            continue
        sketch = None if sid is None else _sketch(stage, index, sid, forms.get(sid))
        versions.append(SchemeVersion(at=utc(entry.saved_at), revision=entry.revision, sketch=sketch))
        last = sid
    if versions and versions[0].sketch is None:
        versions.pop(0)  # the position was empty before the scheme first appeared: nothing changed
    return versions
