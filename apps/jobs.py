"""Generations as jobs: submitted, followed, cancelled, and kept after the request that asked.

Every generation is a job, and its generation record (apps.records) is the job's record:
stored `queued` when it is submitted, `running` once its pipeline starts, and `succeeded`,
`failed` or `cancelled` when it ends, each with its time. POST /jobs submits one and
answers 202 at once; POST /generate submits one and waits for it (the web client's
contract), so a client that goes away cancels nothing: the job ends, is recorded and stays
readable. A process runs its jobs on threads of its own (`Jobs`), at most JOB_WORKERS at a
time; more wait, queued.

A job tells what happens to it as numbered events: `status`, `step` (a step started,
finished or failed, by name), `progress` (one image, from the WebUI instance drawing it:
agent.pool.ImageControl), then `result` or `error`, always last. GET /jobs/<id>/events
streams them as Server-Sent Events, from the start or after `Last-Event-ID`, with a
keep-alive comment every JOB_KEEPALIVE seconds, and ends after the last. GET /jobs/<id>
answers its state, progress and place in the image queue; DELETE /jobs/<id> cancels it: no
step starts after, each image being drawn for it is interrupted on the instance drawing it
and no other, and it ends `cancelled` (409 once it has ended).

A job stays in memory while it runs and JOB_KEEP seconds after, in the process running it;
after that its record answers. While a process runs jobs it marks their records alive every
JOB_HEARTBEAT seconds (`aliveAt`), so the record of a job whose process died is known for
what it is, and answered and stored as failed.

Another process of the deployment answers a job it does not hold through a `Broadcast`,
chosen by where the deployment's state is shared (core.shared). A process alone (no
REDIS_URL) has nobody to ask: such a job is answered from its record alone, its stream
polled, its cancel refused with 409. With Redis (`RedisBroadcast`) the process running a job
also tells its events there, so any process streams them with their own ids and answers the
job's progress, and passes cancels and requests for previews on to the process running it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import orjson
import redis
from bson import ObjectId
from bson.errors import InvalidId
from flask import Blueprint, Flask, Response, current_app, request, stream_with_context, url_for
from pydantic import Field
from pymongo.database import Database
from pymongo.errors import PyMongoError

from agent.errors import BackendError, Cancelled
from agent.pool import ImageControl
from apps import records
from apps.records import (CANCELLED, COLLECTION, ENDED, FAILED, QUEUED, RUNNING, SUCCEEDED, GenerationCall,
                          ImageStep, LLMStep, Recorder, RecordError, Status)
from core import json_codec, shared
from core import validation as v
from core.db import Document, Id, get_db
from core.backends import get_pool
from core.envelope import CODE_BACKEND, ApiError, BadInput, NotFound, failure_of, ok
from core.monitoring import generation_observed
from core.security import researcher

log = logging.getLogger(__name__)

EXTENSION = "jobs"
LAST = ("result", "error")  # the kinds of a job's last event: one of them ends every job
KEEP_ALIVE = ": keep-alive\n\n"  # the comment a quiet event stream sends
LATE = 1.0  # seconds a reader in another process waits for the last events of a job whose record has ended
INTERRUPTED = "Interrupted"  # the kind of a job's error when the process running it died


class Conflict(ApiError):
    """The job has ended (or runs elsewhere), so it cannot be cancelled."""

    status = 409

bp = Blueprint("jobs", __name__)


# -- what the routes answer ----------------------------------------------------------------
class JobError(Document):
    """Why a job did not succeed: the envelope's code and message, and the step that failed."""

    code: int
    message: str
    step: str | None


class Progress(Document):
    """How far a job got: its steps (GPT steps and images) and its images, done of all."""

    steps_done: int = Field(ge=0)
    steps_total: int = Field(ge=0)
    images_done: int = Field(ge=0)
    images_total: int = Field(ge=0)


class JobView(Document):
    """GET /jobs/<id>: a job's state; `result` is exactly /generate's `data`, `error` why it did not succeed."""

    id: Id
    status: Status
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    queue_position: int | None = Field(description="While an image of the job waits for a WebUI instance: its "
                                                   "place in the line (1 is next); else null")
    result: Any = None
    error: JobError | None = None


class JobUrls(Document):
    """Where to follow a job."""

    self: str
    events: str
    cancel: str


class Submitted(Document):
    """POST /jobs: the job, queued."""

    id: Id
    status: Status
    urls: JobUrls


class EventsQuery(v.Body):
    """The query of GET /jobs/<id>/events."""

    preview: Literal["0", "1"] = Field("0", description="1: progress events carry the WebUI's live preview "
                                                        "(base64 PNG) when it has one")


def error_of(failure: BaseException) -> JobError:
    """Return a job's error for the exception it ended with, as /generate's envelope says it."""
    _, code, message = failure_of(failure)
    return JobError(code=code, message=message, step=getattr(failure, "step", None))


# -- one job -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One numbered event of a job."""

    id: int
    kind: str
    data: dict[str, Any]

    @property
    def last(self) -> bool:
        """Whether it is the job's last event."""
        return self.kind in LAST

    def sse(self, preview: bool) -> str:
        """Return the event as Server-Sent Events text (a progress event without its preview unless asked)."""
        data = self.data
        if self.kind == "progress" and not preview:
            data = {key: value for key, value in data.items() if key != "preview"}
        return f"id: {self.id}\nevent: {self.kind}\ndata: {json_codec.dumps(data).decode()}\n\n"


class Job:
    """One generation run by this process: its record, its events, and its hold over its images in the pool."""

    def __init__(self, call: GenerationCall, db: Database, journal: records.RecordJournal | None, owner: str,
                 broadcast: Broadcast) -> None:
        self.call = call
        self._broadcast = broadcast
        self.recorder = Recorder(db, call, journal, on_step=self._on_step)
        self.control = ImageControl(owner, on_event=self._on_image)
        self.status: Status = QUEUED
        self.created_at = datetime.now(timezone.utc)
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.ended_at = 0.0  # monotonic, for how long it is kept
        self.result: dict[str, Any] | None = None
        self.failure: BaseException | None = None
        self.error: JobError | None = None
        self._steps_total, self._images_total = call.handler.size(call.type, call.prompts)
        self._done: set[str] = set()
        self._images_done = 0
        self._events: list[Event] = []
        self._changed = threading.Condition()

    @property
    def id(self) -> ObjectId:
        """The job's id: its record's."""
        return self.recorder.record_id

    @property
    def ended(self) -> bool:
        """Whether the job has ended (its last event is out)."""
        return self.status in ENDED

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Add an event, numbered after the others, and wake whoever waits for one."""
        with self._changed:
            self._add(kind, data)
            self._changed.notify_all()

    def _add(self, kind: str, data: dict[str, Any]) -> None:
        """Number the event and tell it, in order, with how far the job is then (under the lock)."""
        event = Event(len(self._events) + 1, kind, data)
        self._events.append(event)
        self._broadcast.publish(self.id, event, self.progress())

    def events_after(self, last: int, timeout: float) -> tuple[list[Event], bool]:
        """Return the events after number `last` (waiting up to `timeout` for one), and whether no more will come."""
        with self._changed:
            if len(self._events) <= last and not self.ended:
                self._changed.wait(timeout)
            return self._events[last:], self.ended

    def _on_step(self, step: str, state: str, entry: LLMStep | ImageStep | None) -> None:
        data: dict[str, Any] = {"name": step, "state": state}
        if entry is not None:
            data["attempt"] = entry.attempt if isinstance(entry, LLMStep) else entry.attempts
        with self._changed:  # steps finish on the pipeline's threads at once
            if state == "finished" and step not in self._done:
                self._done.add(step)
                self._images_done += isinstance(entry, ImageStep)
            self.emit("step", data)

    def _on_image(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "progress":
            self.emit("progress", data)

    def progress(self) -> Progress:
        """Return how far the job got."""
        with self._changed:
            return Progress(steps_done=len(self._done), steps_total=self._steps_total,
                            images_done=self._images_done, images_total=self._images_total)

    def view(self, pool: Any) -> JobView:
        """Return the job's state for GET /jobs/<id>."""
        waiting = None if self.ended else pool.queue_position(self.control)
        return JobView(id=self.id, status=self.status, created_at=self.created_at, started_at=self.started_at,
                       finished_at=self.finished_at, progress=self.progress(), queue_position=waiting,
                       result=self.result, error=self.error)

    def cancel(self) -> bool:
        """Stop the job: no step starts after, its images are interrupted; return False if it had ended."""
        if self.ended:
            return False
        self.control.cancel()
        return True

    def run(self, gpt: Any, pool: Any) -> None:
        """Run the pipeline, record each state and end with the `result` or `error` event."""
        try:
            with self.recorder as recorder, generation_observed(recorder):
                if self.control.cancelled:  # only a cancel can have cancelled it before it ran
                    raise Cancelled("the generation was cancelled before it started")
                self.started_at, self.status = recorder.running_since, RUNNING
                self.emit("status", {"status": RUNNING})
                recorder.result = self.call.handler.run(self.call.type, self.call.prompts, gpt, pool, recorder.trace,
                                                        control=self.control)
        except Exception as failure:  # every ending is the job's, told in its last event
            if not isinstance(failure, (BackendError, ApiError)):
                log.exception("generation %s failed", self.id)
            self._end(records.status_of(failure), failure=failure)
            return
        self._end(SUCCEEDED, result=recorder.result.model_dump(mode="json", by_alias=True))

    def _end(self, status: Status, *, result: dict[str, Any] | None = None,
             failure: BaseException | None = None) -> None:
        self.result, self.failure = result, failure
        self.error = None if failure is None else error_of(failure)
        # The record's time, so every process answers the same one.
        self.finished_at, self.ended_at = self.recorder.finished_at or datetime.now(timezone.utc), time.monotonic()
        with self._changed:
            self.status = status
            self._add("status", {"status": status})
            last = ("result", {"data": result}) if failure is None else ("error", self.error.model_dump(by_alias=True))
            self._add(*last)
            self._changed.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job ends; return whether it did."""
        with self._changed:
            return self._changed.wait_for(lambda: self.ended, timeout)


# -- what the processes of a deployment tell each other of their jobs ----------------------
class Broadcast:
    """What the process running a job tells the deployment's other processes, and what they ask of it.

    The runner `publish`es each event of its jobs, and renews what is kept of those still
    running (`alive`). Another process `follows` a job's events when it can (`read`), answers
    its `progress`, and asks the runner to `cancel` it or to draw previews (`ask_preview`);
    the runner hears those asks and acts on the jobs it holds.
    """

    def publish(self, job_id: ObjectId, event: Event, progress: Progress) -> None:
        """Tell the job's event, and how far the job is then; quick, and never raises (called under the job's lock)."""
        raise NotImplementedError

    def alive(self, job_ids: Iterable[ObjectId]) -> None:
        """Keep what is told of these jobs, which this process still runs, for a while longer."""
        raise NotImplementedError

    def follows(self, job_id: ObjectId, status: Status) -> bool:
        """Return whether this process can follow the events of a job it does not hold, whose record says `status`."""
        raise NotImplementedError

    def read(self, job_id: ObjectId, after: int, timeout: float) -> list[Event]:
        """Return the job's told events after number `after`, waiting up to `timeout` seconds for one."""
        raise NotImplementedError

    def progress(self, job_id: ObjectId) -> Progress | None:
        """Return how far a job another process runs got, as last told; None when it is not told."""
        raise NotImplementedError

    def cancel(self, job_id: ObjectId) -> bool:
        """Ask whichever process runs the job to cancel it; return False when no other process can be asked."""
        raise NotImplementedError

    def ask_preview(self, job_id: ObjectId) -> None:
        """Ask whichever process runs the job to draw its images with live previews from now on."""
        raise NotImplementedError

    def close(self) -> None:
        """Tell what is still to tell, and stop listening."""


class ProcessAlone(Broadcast):
    """One server process, the only one: nobody to tell, and another's job is known by its record alone."""

    def publish(self, job_id: ObjectId, event: Event, progress: Progress) -> None:
        pass

    def alive(self, job_ids: Iterable[ObjectId]) -> None:
        pass

    def follows(self, job_id: ObjectId, status: Status) -> bool:
        return False

    def read(self, job_id: ObjectId, after: int, timeout: float) -> list[Event]:
        return []

    def progress(self, job_id: ObjectId) -> Progress | None:
        return None

    def cancel(self, job_id: ObjectId) -> bool:
        return False

    def ask_preview(self, job_id: ObjectId) -> None:
        pass


@dataclass(frozen=True)
class _Told:
    """One event on its way to Redis."""

    job_id: ObjectId
    event: Event
    progress: Progress


_STOP = object()  # the publisher's last item: what came before it is told, then it stops


class RedisBroadcast(Broadcast):
    """The jobs of every process of the deployment told through one Redis.

    - Each event of a job is appended to the stream `<prefix>job:<id>:events`, its entry id
      `<n>-0` for event number n (so an entry's id is the SSE id), its fields `kind`, `data`
      (JSON) and `progress` (the job's Progress then, JSON, so the last entry answers GET
      /jobs/<id>). One thread writes them in order, in pipelined batches, so emitting costs
      the job a queue put; when Redis fails the events are dropped (logged once), and the
      runner's own readers still have them all. A stream keeps its last STREAM_LENGTH
      entries or so; it expires STREAM_KEEP seconds after the job's last event, or, while
      the job runs, `alive_for` seconds after its process last renewed it (each heartbeat),
      so the stream of a job whose process died goes soon after its record is stale.
    - Another process follows a stream with a blocking XREAD after the reader's last id, and
      answers GET /jobs/<id> from the record with the progress of the last entry (its place
      in the image queue is the runner's to know: null there).
    - DELETE /jobs/<id> on any process publishes the id on `<prefix>jobs:cancel`, and a
      reader asking for previews on `<prefix>jobs:preview`; every process listens to both on
      one thread and acts on the jobs it holds. A message no process holds the job for is
      lost: the job had ended, or its process died (its record says so soon), or it is a
      preview asked while the listener reconnected to Redis (asked again, it comes). Once
      asked, a job's progress events carry a preview (base64) each, in its stream too.
    """

    STREAM_LENGTH = 5000  # events of one job: a few hundred, with a progress event a second per image drawn
    STREAM_KEEP = 3600.0  # seconds an ended job's events stay: a reader who lost its connection resumes
    OUTBOX = 10_000  # events waiting for Redis, at most: beyond, while Redis does not answer, they are dropped
    BATCH = 256  # entries written, or read, at once
    LISTEN = 5.0  # seconds the listener waits for a message before it looks whether it should stop

    def __init__(self, state: shared.InRedis, holder: Callable[[ObjectId], Job | None], heartbeat: float) -> None:
        self.state, self.client, self.holder = state, state.client, holder
        self.alive_for = max(60, round(6 * heartbeat))  # seconds: beats renew it long before it expires
        self.cancels, self.previews = state.key("jobs", "cancel"), state.key("jobs", "preview")
        self._outbox: queue.Queue[Any] = queue.Queue(self.OUTBOX)
        self._ended: set[ObjectId] = set()  # told ended: renewals no longer shorten their expiry
        self._failing = False  # Redis failed last time: told once, until it answers again
        self._closed = threading.Event()
        self._close_lock = threading.Lock()
        self._listener = self.client.pubsub(ignore_subscribe_messages=True)
        self._subscribed = self._subscribe()  # before any job, so no ask for one is missed (Redis up)
        self._threads = [threading.Thread(target=self._publishing, name="job-events-out", daemon=True),
                         threading.Thread(target=self._listening, name="job-events-in", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stream(self, job_id: ObjectId) -> str:
        """Return the key of the stream of the job's events."""
        return self.state.key("job", str(job_id), "events")

    # -- told by the process running the job
    def publish(self, job_id: ObjectId, event: Event, progress: Progress) -> None:
        if self._closed.is_set():
            return  # a job still running when its process closed: nobody hears it any more
        try:
            self._outbox.put_nowait(_Told(job_id, event, progress))
        except queue.Full:
            self._trouble("%d job events wait for Redis, which does not take them: new ones are dropped",
                          self.OUTBOX)

    def alive(self, job_ids: Iterable[ObjectId]) -> None:
        if not self._closed.is_set():
            try:  # in line with the events, so a renewal never outlives its job's last event
                self._outbox.put_nowait(frozenset(job_ids))
            except queue.Full:
                pass  # the events are dropped too: there is nothing to renew

    def _publishing(self) -> None:
        while True:
            batch = [self._outbox.get()]
            while len(batch) < self.BATCH and batch[-1] is not _STOP:
                try:
                    batch.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write([item for item in batch if item is not _STOP])
            except Exception:  # a bug here must not stop the events of the jobs to come
                log.exception("could not tell %d job events to Redis", len(batch))
            if batch[-1] is _STOP:
                return

    def _write(self, batch: list[Any]) -> None:
        pipe = self.client.pipeline(transaction=False)
        expiries: dict[str, float] = {}
        for item in batch:
            if isinstance(item, frozenset):  # a renewal
                expiries.update((self.stream(i), self.alive_for) for i in item if i not in self._ended)
                self._ended &= item  # the others will not be renewed again
                continue
            key = self.stream(item.job_id)
            pipe.xadd(key, {"kind": item.event.kind, "data": json_codec.dumps(item.event.data),
                            "progress": json_codec.dumps(item.progress.model_dump(by_alias=True))},
                      id=f"{item.event.id}-0", maxlen=self.STREAM_LENGTH, approximate=True)
            expiries[key] = self.STREAM_KEEP if item.event.last else self.alive_for
            if item.event.last:
                self._ended.add(item.job_id)
        for key, seconds in expiries.items():
            pipe.expire(key, round(seconds))
        if not expiries:
            return
        try:
            pipe.execute()
        except redis.RedisError as error:
            self._trouble("could not tell job events to Redis (%s); readers on other processes miss them",
                          error)
            return
        if self._failing:
            self._failing = False
            log.info("job events reach Redis again")

    # -- read by the other processes
    def follows(self, job_id: ObjectId, status: Status) -> bool:
        if status not in ENDED:
            return True  # told as it runs (its stream may not be written yet)
        try:
            return bool(self.client.exists(self.stream(job_id)))
        except redis.RedisError as error:
            self._trouble("could not look for a job's events in Redis (%s); its record answers", error)
            return False

    def read(self, job_id: ObjectId, after: int, timeout: float) -> list[Event]:
        key = self.stream(job_id)
        try:
            answer = self.state.blocking.xread({key: f"{after}-0"}, count=self.BATCH,
                                               block=max(1, round(timeout * 1000)))
        except redis.RedisError as error:
            self._trouble("could not read a job's events from Redis (%s)", error)
            time.sleep(timeout)  # as if none came: the reader looks at the record meanwhile
            return []
        entries = answer.get(key, [[]])[0] if isinstance(answer, dict) else (answer[0][1] if answer else [])
        return [Event(int(entry_id.partition("-")[0]), fields["kind"], orjson.loads(fields["data"]))
                for entry_id, fields in entries]

    def progress(self, job_id: ObjectId) -> Progress | None:
        try:
            last = self.client.xrevrange(self.stream(job_id), count=1)
        except redis.RedisError as error:
            self._trouble("could not read a job's progress from Redis (%s)", error)
            return None
        return Progress.model_validate(orjson.loads(last[0][1]["progress"])) if last else None

    def cancel(self, job_id: ObjectId) -> bool:
        try:
            self.client.publish(self.cancels, str(job_id))
        except redis.RedisError as error:
            raise ApiError("the cancel could not be passed on to the server process running the job "
                           f"({type(error).__name__} from Redis); try again shortly", status=503) from error
        return True

    def ask_preview(self, job_id: ObjectId) -> None:
        try:
            self.client.publish(self.previews, str(job_id))
        except redis.RedisError as error:
            self._trouble("could not ask for a job's previews through Redis (%s)", error)

    # -- heard by the process running the job
    def _subscribe(self) -> bool:
        """Listen to the cancels and previews; return False (told once) when Redis does not answer."""
        try:
            self._listener.subscribe(self.cancels, self.previews)
            return True
        except redis.RedisError as error:
            self._trouble("could not subscribe to cancels and previews in Redis (%s); trying again", error)
            return False

    def _listening(self) -> None:
        while not self._closed.is_set():
            if not self._subscribed:  # Redis was down as the process started
                self._subscribed = self._subscribe()
                if not self._subscribed:
                    self._closed.wait(1.0)
                    continue
            try:
                message = self._listener.get_message(timeout=self.LISTEN)
            except redis.RedisError as error:  # redis-py subscribes again when it reconnects
                self._trouble("lost the subscription to cancels and previews in Redis (%s)", error)
                self._closed.wait(1.0)
                continue
            if message is None:
                continue
            try:
                self._heard(message["channel"], message["data"])
            except Exception:  # one job's trouble must not deafen the process to the others
                log.exception("could not act on %r for job %r", message["channel"], message["data"])
        self._listener.close()

    def _heard(self, channel: str, data: str) -> None:
        try:
            job = self.holder(ObjectId(data))
        except (InvalidId, TypeError):
            return  # not a job's id: the wake-up of a process that closes
        if job is None:
            return  # another process's, or ended and forgotten
        if channel == self.previews:
            job.control.preview = True
        elif job.cancel():
            log.info("generation %s cancelled, as another server process asked", job.id)

    def _trouble(self, message: str, *args: Any) -> None:
        """Log a Redis failure as a warning the first time, then quietly until it answers again."""
        (log.debug if self._failing else log.warning)(message, *args)
        self._failing = True

    def close(self) -> None:
        with self._close_lock:
            if self._closed.is_set():
                return
            self._closed.set()
        try:
            self._outbox.put(_STOP, timeout=2.0)
            self.client.publish(self.cancels, "")  # wakes the listener now rather than at its next timeout
        except (queue.Full, redis.RedisError):
            pass
        for thread in self._threads:
            thread.join(5.0)


def broadcast_of(state: shared.Shared, holder: Callable[[ObjectId], Job | None], heartbeat: float) -> Broadcast:
    """Return how this process tells the deployment's others of its jobs, by where their shared state is."""
    if isinstance(state, shared.InRedis):
        return RedisBroadcast(state, holder, heartbeat)
    return ProcessAlone()


# -- the jobs of this process ---------------------------------------------------------------
class Jobs:
    """The jobs of this process: run on its threads, kept while they run and `keep` seconds after, and told."""

    def __init__(self, app: Flask, workers: int, keep: float, heartbeat: float) -> None:
        self.app, self.keep, self.heartbeat = app, keep, heartbeat
        self._executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="job")
        self._jobs: dict[ObjectId, Job] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.broadcast = broadcast_of(app.extensions[shared.EXTENSION], self.get, heartbeat)
        self._beat = threading.Thread(target=self._heartbeats, name="job-heartbeat", daemon=True)
        self._beat.start()

    def submit(self, call: GenerationCall, db: Database, journal: records.RecordJournal | None, owner: str,
               gpt: Any, pool: Any) -> Job:
        """Record `call` as a queued job and start it on a job thread; return it."""
        job = Job(call, db, journal, owner, self.broadcast)
        job.recorder.queued()
        job.emit("status", {"status": QUEUED})
        with self._lock:
            self._forget_old()
            self._jobs[job.id] = job
        self._executor.submit(self._run, job, gpt, pool)
        return job

    def _run(self, job: Job, gpt: Any, pool: Any) -> None:
        with self.app.app_context():  # the metrics and logs of the app that took the job
            job.run(gpt, pool)

    def get(self, job_id: ObjectId) -> Job | None:
        """Return the job if this process runs it, or ran it less than `keep` seconds ago."""
        with self._lock:
            self._forget_old()
            return self._jobs.get(job_id)

    def _forget_old(self) -> None:
        now = time.monotonic()
        for job_id in [i for i, job in self._jobs.items() if job.ended and now - job.ended_at > self.keep]:
            del self._jobs[job_id]

    def _heartbeats(self) -> None:
        """Mark the records, and what is told, of the jobs this process runs alive, every `heartbeat` seconds."""
        while not self._closed.wait(self.heartbeat):
            with self._lock:
                live = [job.id for job in self._jobs.values() if not job.ended]
            self.broadcast.alive(live)
            if not live:
                continue
            try:
                with self.app.app_context():
                    get_db()[COLLECTION].update_many({"_id": {"$in": live}, "status": {"$in": [QUEUED, RUNNING]}},
                                                     {"$set": {"aliveAt": time.time()}})
            except PyMongoError as error:
                log.debug("could not mark %d running jobs alive: %s", len(live), type(error).__name__)

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking jobs and give the ones submitted `timeout` seconds to end (each ends, is recorded and told)."""
        self._closed.set()
        self._executor.shutdown(wait=False)  # the queued ones still run: each has a record and maybe a waiter
        deadline = time.monotonic() + timeout
        with self._lock:
            running = [job for job in self._jobs.values() if not job.ended]
        for job in running:
            job.wait(max(0.0, deadline - time.monotonic()))
        self.broadcast.close()


def get_jobs() -> Jobs:
    """Return the current app's jobs."""
    return current_app.extensions[EXTENSION]


def init_app(app: Flask) -> None:
    """Give the app its jobs and register the routes."""
    app.extensions[EXTENSION] = Jobs(app, app.config["JOB_WORKERS"], app.config["JOB_KEEP"],
                                     app.config["JOB_HEARTBEAT"])
    app.register_blueprint(bp)


def close_app(app: Flask) -> None:
    """Let the app's running jobs end."""
    jobs = app.extensions.get(EXTENSION)
    if jobs is not None:
        jobs.close()


# -- a job read from its record -------------------------------------------------------------
def _stale(doc: dict[str, Any], heartbeat: float) -> bool:
    """Return whether a queued or running record's process stopped marking it alive (three beats missed)."""
    alive = doc.get("aliveAt")
    return doc.get("status") in (QUEUED, RUNNING) and (
        not isinstance(alive, (int, float)) or time.time() - alive > 3 * heartbeat)


def _recorded(db: Database, job_id: ObjectId) -> dict[str, Any]:
    """Return the record of a job, stored as failed first if the process running it died."""
    doc = db[COLLECTION].find_one({"_id": job_id})
    if doc is None:
        raise NotFound(f"no job has the id {job_id}")
    if _stale(doc, current_app.config["JOB_HEARTBEAT"]):
        error = RecordError(step=None, kind=INTERRUPTED,
                            message="the server running this generation stopped before it ended")
        ended = {"status": FAILED, "error": error.model_dump(by_alias=True)}
        db[COLLECTION].update_one({"_id": job_id, "status": doc["status"]}, {"$set": ended})
        doc = {**doc, **ended}
        log.warning("generation %s was left %s by a server that stopped; recorded as failed", job_id, doc["status"])
    return doc


def _record_error(doc: dict[str, Any]) -> JobError | None:
    error = doc.get("error")
    if doc.get("status") not in (FAILED, CANCELLED) or not error:
        return None
    # Records from before jobs keep no code: a backend's failure is what most were.
    return JobError(code=error.get("code") or CODE_BACKEND, message=error.get("message") or "",
                    step=error.get("step"))


def _record_view(db: Database, doc: dict[str, Any], told: Progress | None = None) -> JobView:
    """Return the state of a job this process does not hold, from its record (and its progress as `told`)."""
    steps = doc.get("steps") or []
    done = {entry["step"] for entry in steps if not entry.get("error")}
    images = {entry["step"] for entry in steps if entry.get("kind") == "image" and not entry.get("error")}
    total = len(done)
    progress = Progress(steps_done=total, steps_total=total, images_done=len(images), images_total=len(images))
    return JobView(id=doc["_id"], status=doc["status"], created_at=doc["createdAt"], started_at=doc.get("startedAt"),
                   finished_at=doc.get("finishedAt"),
                   progress=told if told is not None and doc["status"] not in ENDED else progress,
                   queue_position=None,
                   result=records.answered(db, doc["result"]) if doc.get("status") == SUCCEEDED else None,
                   error=_record_error(doc))


# -- the routes ------------------------------------------------------------------------------
def _last_event_id() -> int:
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or len(raw) > 18:
        raise BadInput("Last-Event-ID", "must be the id of an event: a whole number")
    return int(raw)


def urls_of(job_id: ObjectId) -> JobUrls:
    """Return where to follow a job."""
    return JobUrls(self=url_for("jobs.get_job", job_id=str(job_id)),
                   events=url_for("jobs.job_events", job_id=str(job_id)),
                   cancel=url_for("jobs.cancel_job", job_id=str(job_id)))


@bp.get("/jobs/<job_id>")
@researcher
def get_job(job_id: str):
    """Answer a job's state, progress and place in the image queue, and its result or error once it ended."""
    key = v.object_id(job_id, "a job")
    jobs = get_jobs()
    job = jobs.get(key)
    if job is not None:
        return ok(job.view(get_pool()).model_dump(by_alias=True))
    doc = _recorded(get_db(), key)
    told = None if doc["status"] in ENDED else jobs.broadcast.progress(key)
    return ok(_record_view(get_db(), doc, told).model_dump(by_alias=True))


@bp.delete("/jobs/<job_id>")
@researcher
def cancel_job(job_id: str):
    """Cancel a job wherever it runs: 202 with its state (it ends `cancelled` soon), 409 once it has ended."""
    key = v.object_id(job_id, "a job")
    jobs = get_jobs()
    job = jobs.get(key)
    if job is None:
        doc = _recorded(get_db(), key)
        if doc["status"] in ENDED:
            raise Conflict(f"job {key} has ended ({doc['status']}); there is nothing to cancel")
        if not jobs.broadcast.cancel(key):
            raise Conflict(f"job {key} runs in another server process, which alone can cancel it")
        log.info("generation %s: its cancel is passed on to the server process running it", key)
        return ok(_record_view(get_db(), doc, jobs.broadcast.progress(key)).model_dump(by_alias=True), status=202)
    if not job.cancel():
        raise Conflict(f"job {key} has ended ({job.status}); there is nothing to cancel")
    log.info("generation %s cancelled", key)
    return ok(job.view(get_pool()).model_dump(by_alias=True), status=202)


def _stream(job: Job, after: int, preview: bool, keepalive: float) -> Iterator[str]:
    """Yield the job's events after number `after` as they come, a comment while none does; end after the last."""
    while True:
        events, ended = job.events_after(after, keepalive)
        for event in events:
            yield event.sse(preview)
            after = event.id
        if ended and not events:
            return
        if not events:
            yield KEEP_ALIVE


def _followed_stream(broadcast: Broadcast, db: Database, doc: dict[str, Any], after: int, preview: bool,
                     keepalive: float) -> Iterator[str]:
    """Yield the events another process tells of its job after number `after`, as they come; end after the last.

    While none comes for `keepalive` seconds: a comment, and a look at the record, so that a
    job whose last events will never be told (its process died, or Redis lost them) ends as
    its record says, numbered after the last event sent.
    """
    late = doc["status"] in ENDED  # the record is stored just before the last events are told: they are near
    while True:
        events = broadcast.read(doc["_id"], after, LATE if late else keepalive)
        for event in events:
            yield event.sse(preview)
            after = event.id
            if event.last:
                return
        if events:
            continue
        if late:
            break
        yield KEEP_ALIVE
        doc = _recorded(db, doc["_id"])
        late = doc["status"] in ENDED
    for number, (kind, data) in enumerate(_ending(db, doc), after + 1):
        yield Event(number, kind, data).sse(False)


def _ending(db: Database, doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Return the last two events an ended record tells: its status, then its result or error."""
    error = _record_error(doc)
    last = ("result", {"data": records.answered(db, doc["result"])}) if error is None else \
        ("error", error.model_dump(by_alias=True))
    return [("status", {"status": doc["status"]}), last]


def _recorded_stream(db: Database, key: ObjectId, after: int, poll: float, keepalive: float) -> Iterator[str]:
    """Yield the events a record tells (its status, then its result or error), for a job whose events are not told."""
    waited = 0.0
    while True:
        doc = _recorded(db, key)
        if doc["status"] in ENDED:
            break
        if after < 1:
            yield Event(1, "status", {"status": doc["status"]}).sse(False)
            after = 1
        time.sleep(poll)
        waited += poll
        if waited >= keepalive:
            yield KEEP_ALIVE
            waited = 0.0
    for number, (kind, data) in enumerate(_ending(db, doc), 2):
        if number > after:
            yield Event(number, kind, data).sse(False)


@bp.get("/jobs/<job_id>/events")
@researcher
def job_events(job_id: str):
    """Stream a job's events as Server-Sent Events, after `Last-Event-ID` when it is sent."""
    key = v.object_id(job_id, "a job")
    query = v.parse_query(EventsQuery, request.args)
    after = _last_event_id()
    keepalive = current_app.config["JOB_KEEPALIVE"]
    preview = query.preview == "1"
    jobs = get_jobs()
    job = jobs.get(key)
    if job is not None:
        if preview:
            job.control.preview = True
        events = _stream(job, after, preview, keepalive)
    else:
        db = get_db()
        doc = _recorded(db, key)  # 404 before the stream starts
        if preview and doc["status"] not in ENDED:
            jobs.broadcast.ask_preview(key)
        if jobs.broadcast.follows(key, doc["status"]):
            events = _followed_stream(jobs.broadcast, db, doc, after, preview, keepalive)
        else:
            events = _recorded_stream(db, key, after, min(1.0, keepalive), keepalive)
    return Response(stream_with_context(events), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
