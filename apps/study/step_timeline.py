"""A generation's steps drawn on one time axis: a bar per trace entry, from its start to its end.

Positions are percentages of the axis, which runs from the request's start to its end (or
to the last entry's end, if later), so the page draws them as SVG attributes and needs no
script or inline style. An image job's queue wait is the start of its bar; its last
attempt's drawing, the end. Entries of records made before steps were timed have no bar.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

State = Literal["ok", "retried", "failed"]


class StepBar(BaseModel):
    """One trace entry of a record and where the page draws it (percent of the axis; None: not timed)."""

    entry: dict[str, Any]  # the stored entry, as GenerationRecord.steps holds it
    left: float | None
    width: float | None
    wait: float  # the queue wait at the bar's start
    state: State
    note: str


class StepTimeline(BaseModel):
    """A generation's bars, in the order the steps began, and the length of the axis in seconds."""

    seconds: float
    bars: list[StepBar]
    ticks: list[tuple[float, float]]  # (percent, seconds) for the axis labels


def _state(entry: dict[str, Any], retried: bool) -> State:
    if not entry.get("error"):
        return "ok"
    return "retried" if retried else "failed"


def _note(entry: dict[str, Any]) -> str:
    """Return what the bar's label says beyond the step's name: attempts, retries, waits."""
    said = []
    if entry.get("kind") == "llm":
        if entry.get("attempt", 1) > 1:
            said.append(f"attempt {entry['attempt']} ({entry.get('reason') or 'retry'})")
        if entry.get("retries"):
            said.append(f"{entry['retries']} transport retries")
    else:
        if (entry.get("attempts") or 1) > 1:
            said.append(f"{entry['attempts']} attempts")
        if entry.get("queueWait"):
            said.append(f"waited {entry['queueWait']:.2f} s")
    if entry.get("latency") is not None:
        said.append(f"{entry['latency']:.2f} s")
    return ", ".join(said)


def _percent(seconds: float, total: float) -> float:
    return round(100 * max(0.0, min(seconds, total)) / total, 3)


def step_timeline(record: dict[str, Any]) -> StepTimeline:
    """Return the bars of a record's steps on an axis from the request's start to its end."""
    entries = [entry for entry in record.get("steps") or [] if isinstance(entry, dict)]
    ends = [entry["finished"] for entry in entries if isinstance(entry.get("finished"), (int, float))]
    total = max([(record.get("durationMs") or 0) / 1000, *ends, 0.001])
    # An attempt that failed is "retried" when a later attempt of the same step was made.
    last_attempt = {}
    for index, entry in enumerate(entries):
        last_attempt[entry.get("step")] = index
    bars = []
    for index, entry in enumerate(entries):
        started, finished = entry.get("started"), entry.get("finished")
        timed = isinstance(started, (int, float)) and isinstance(finished, (int, float))
        left = _percent(started, total) if timed else None
        width = max(round(_percent(finished, total) - left, 3), 0.2) if timed else None  # a sliver stays visible
        wait = min(_percent(entry.get("queueWait") or 0, total), width) if timed else 0.0
        bars.append(StepBar(entry=entry, left=left, width=width, wait=wait,
                            state=_state(entry, last_attempt[entry.get("step")] != index), note=_note(entry)))
    bars.sort(key=lambda bar: bar.left if bar.left is not None else 101.0)  # stable: equal starts keep their order
    ticks = [(_percent(total * share, total), round(total * share, 2)) for share in (0, 0.25, 0.5, 0.75, 1)]
    return StepTimeline(seconds=total, bars=bars, ticks=ticks)
