"""A fair, failure-aware pool of Stable Diffusion WebUI instances shared by the whole deployment.

A WebUI runs one generation at a time and silently queues the rest, so sending it several
jobs stacks them on one GPU while others idle. The pool is therefore a semaphore with one
slot per instance: `acquire()` waits for a free instance and `release()` gives it back,
and `txt2img()` runs each attempt of a job between the two, releasing in a `finally`.

Waiters stand in one line, and whoever frees an instance hands it straight to the head of
the line in the same atomic step, so a job arriving later can never barge in ahead of the
line's order. The line's order is SD_QUEUE_ORDER:

- "fair" (the default) serves owners in turn: each owner with images waiting gets one
  instance per round, so one participant's 24 images cannot hold back everyone who
  arrives after them. Within one owner, generations go in the order they began (their
  `ImageControl`s were made) and each one's images in the order they came, so an owner's
  first generation finishes first instead of all of them finishing late together.
- "fifo" serves images strictly in arrival order, whoever they are for.

In both, a retry goes first within its owner and its owner is served next, since its job
arrived before every waiter. A `txt2img` that would leave more than
SD_MAX_QUEUED_PER_PARTICIPANT of one owner's images waiting raises `TooManyQueued`.

An `ImageControl` is what one generation holds over its image jobs: it names their owner,
hears what happens to them (queued, started, progress polled from the instance about once
a second, finished) and cancels them. A cancelled image leaves the line at once; a running
one gets POST /sdapi/v1/interrupt on its own instance, which the lease is not given back
before the interrupt was sent, so it can never reach another job; the instance then goes
back idle, since it did nothing wrong. Either way its `txt2img` raises `SDCancelled`.

An instance that fails a job is set aside for `cooldown` seconds and the job is retried on
another one. Health is checked lazily, with no resident thread: the first acquire, release
or waiter wake-up after a cooldown ends starts a short-lived thread that probes the
instance (GET /internal/ping, else /sdapi/v1/progress); only a passing probe puts it back
in the pool, a failed one restarts the cooldown. When every instance is cooling down,
callers and waiters get `AllInstancesDown` at once instead of waiting for the acquire timeout.

Where the line and the instances' states are kept is the pool's board, and there are two:
- `_LocalBoard` keeps them in this process, under one lock: right for a server that is one
  process, and wrong for several, which would each lend every instance once.
- `_RedisBoard` (REDIS_URL set: core.shared.InRedis) keeps them in Redis for every process
  of the deployment, each step one Lua script and each wait a BLPOP. A lease expires unless
  the process holding it renews it, so the instances of a killed process come back within
  the shared ttl (interrupted first: the WebUI would go on drawing the dead one's image);
  cooldowns and probe results are the deployment's, one probe per instance for all.
Both serve the same order, and every test of the pool runs against both.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import math
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from agent.errors import (
    INSTANCE_FAILURES, AllInstancesDown, JobContext, NoInstancesConfigured, PoolError, PoolTimeout, SDCancelled,
    SDError, SDLeaseLost, TooManyQueued,
)
from agent.sd import Generation, SDEndpoint, interrupt, ping, progress, text2Image
from core.image_store import Image
from core.shared import InRedis, Shared, SharedUnavailable

log = logging.getLogger(__name__)

InstanceState = Literal["idle", "busy", "cooldown", "probing"]
IDLE, BUSY, COOLDOWN, PROBING = get_args(InstanceState)
QueueOrder = Literal["fair", "fifo"]
FAIR, FIFO = get_args(QueueOrder)
EventHandler = Callable[[str, dict[str, Any]], None]
WARN_WAIT = 30.0  # a job waiting this many seconds for an instance means the pool is too small
WARN_EVERY = 60.0  # seconds between two such warnings
PROGRESS_EVERY = 1.0  # seconds between two progress polls of the instance running a job


@dataclass(frozen=True)
class SDResult:
    """The images of one job (decoded, never empty) and how the pool got them."""

    images: list[Image]
    info: dict[str, Any]
    instance: str
    latency: float
    queue_wait: float
    attempts: int
    errors: list[str] = field(default_factory=list)


class ImageControl:
    """What one generation holds over its image jobs: whose they are, what happens to them, and cancel.

    `on_event(kind, data)` hears, from the pool's threads (so it must be quick), "queued"
    `{"position"}` when an image has to wait, "started" `{"instance"}`, "progress"
    `{"instance", "progress", "eta", "step", "steps", "preview"}` while it runs (`preview`
    is the WebUI's live preview, base64, only when `preview` is asked for) and "finished"
    `{"instance", "ok"}` after each attempt.
    """

    def __init__(self, owner: str, *, on_event: EventHandler | None = None, preview: bool = False) -> None:
        self.owner = owner
        self.on_event, self.preview = on_event, preview
        self._key = owner  # whose turn in the fair line
        # When it began (wall clock, µs, so processes of one deployment agree), for the order within one owner.
        self._begun = time.time_ns() // 1000
        self._lock = threading.Lock()
        self._cancelled = False
        self._jobs: set[_Job] = set()  # waiting or running now

    @classmethod
    def anonymous(cls) -> ImageControl:
        """Return a control whose owner is itself alone (a txt2img called without one)."""
        control = cls("anonymous")
        control._key = f"\x00anonymous {uuid.uuid4().hex}"  # no owner's name: no other job can share its turn
        return control

    @property
    def cancelled(self) -> bool:
        """Return whether `cancel()` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Cancel every image job of this control, now and later; return once running ones were interrupted."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            jobs = list(self._jobs)
        for job in jobs:
            job.pool._cancel(job)

    def _attach(self, job: _Job) -> None:
        """Count `job` as one of this control's; raise SDCancelled if the control is cancelled."""
        with self._lock:
            if self._cancelled:
                raise SDCancelled("the generation was cancelled before this image was asked for")
            self._jobs.add(job)

    def _detach(self, job: _Job) -> None:
        with self._lock:
            self._jobs.discard(job)

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(kind, data)
        except Exception:  # the listener's bug must not fail the image
            log.exception("the event handler of %s's images failed on %r", self.owner, kind)


@dataclass(eq=False)
class _Instance:
    """One WebUI instance of a pool: its endpoint and gate, and the local board's state and counters of it.

    The state and counters are `_LocalBoard`'s, changed only under its lock; `_RedisBoard`
    keeps them in Redis, for every process.
    """

    endpoint: SDEndpoint
    state: InstanceState = IDLE
    cooldown_until: float = 0.0
    leased_at: float = 0.0
    jobs: int = 0
    failures: int = 0
    busy_seconds: float = 0.0
    cooldowns: int = 0
    last_error: str = ""
    # Held while an interrupt is sent to it, and by its release, so the interrupt meant for
    # one job can never reach the next job on the instance.
    gate: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def due(self, now: float) -> bool:
        """Return whether the cooldown is over, so the instance should be probed."""
        return self.state == COOLDOWN and self.cooldown_until <= now

    def view(self, now: float) -> dict[str, Any]:
        """Return the state and counters, for metrics (no credentials)."""
        busy = self.busy_seconds + (now - self.leased_at if self.state == BUSY else 0.0)
        return _instance_view(self.endpoint.name, self.state, jobs=self.jobs, failures=self.failures,
                              busy_seconds=busy, cooldowns=self.cooldowns,
                              cooldown_remaining=max(0.0, self.cooldown_until - now), last_error=self.last_error)


@dataclass(eq=False)
class _Job:
    """One txt2img call of a control: where it waits (on its board) or runs now."""

    pool: SDInstancePool
    control: ImageControl
    waiter: _Waiter | None = None  # on the local board, under its lock
    ticket: str | None = None  # on the Redis board
    # Set by the board when it grants the lease (a cancel that finds the job out of line then
    # finds it here), cleared by the pool under its `_running` lock when the lease ends.
    instance: _Instance | None = None


@dataclass(eq=False)
class _Waiter:
    """A thread waiting for an instance: it is handed one (or an error) and its event is set."""

    job: _Job
    rank: tuple[int, ...] = ()  # its place among its owner's waiters, set by the line
    event: threading.Event = field(default_factory=threading.Event)
    instance: _Instance | None = None
    error: SDError | None = None

    def serve(self, instance: _Instance | None = None, error: SDError | None = None) -> None:
        """Hand the waiter an instance or an error and wake it."""
        self.instance, self.error = instance, error
        self.job.waiter, self.job.instance = None, instance
        self.event.set()


class _Line:
    """The waiters in the order they will be served: owners in turn ("fair") or by arrival ("fifo")."""

    def __init__(self, order: QueueOrder) -> None:
        if order not in (FAIR, FIFO):
            raise ValueError(f"the queue order must be {FAIR!r} or {FIFO!r}, got {order!r}")
        self.order = order
        # Each owner's waiters, sorted by rank; the first owner's turn is next. FIFO has one owner.
        self._owners: OrderedDict[Hashable, list[_Waiter]] = OrderedDict()
        self._waiting: Counter[Hashable] = Counter()  # per real owner, for the cap in either order
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return sum(self._waiting.values())

    def waiting(self, control: ImageControl) -> int:
        """Return how many images of the control's owner wait."""
        return self._waiting[control._key]

    def add(self, waiter: _Waiter, *, retry: bool = False) -> None:
        """Put `waiter` in line: in its place within its owner; a retry first, and its owner next."""
        control, key = waiter.job.control, self._turn(waiter)
        arrival = next(self._arrivals)
        if retry:
            waiter.rank = (0, arrival)
        else:
            waiter.rank = (1, control._begun if self.order == FAIR else 0, arrival)
        bisect.insort(self._owners.setdefault(key, []), waiter, key=lambda w: w.rank)
        if retry:
            self._owners.move_to_end(key, last=False)
        self._waiting[control._key] += 1

    def pop(self) -> _Waiter:
        """Take the waiter served next out of the line; its owner's turn passes to the next owner."""
        key, waiters = next(iter(self._owners.items()))
        waiter = waiters.pop(0)
        if waiters:
            self._owners.move_to_end(key)
        else:
            del self._owners[key]
        self._forget(waiter)
        return waiter

    def remove(self, waiter: _Waiter) -> bool:
        """Take `waiter` out of the line wherever it stands; return whether it was in it."""
        key = self._turn(waiter)
        waiters = self._owners.get(key, [])
        if waiter not in waiters:
            return False
        waiters.remove(waiter)
        if not waiters:
            del self._owners[key]
        self._forget(waiter)
        return True

    def drain(self) -> Iterator[_Waiter]:
        """Take every waiter out of the line, in the order they would have been served."""
        while self._owners:
            yield self.pop()

    def position(self, waiter: _Waiter) -> int:
        """Return the 1-based place of a waiter in line, if nobody else arrives."""
        key = self._turn(waiter)
        index = self._owners[key].index(waiter)
        # Before it, every owner is served once per round for `index` rounds, then the owners
        # whose turn comes before its own in that round.
        ahead = sum(min(len(waiters), index) for waiters in self._owners.values())
        for other, waiters in self._owners.items():
            if other == key:
                break
            ahead += len(waiters) > index
        return ahead + 1

    def first_of(self, control: ImageControl) -> _Waiter | None:
        """Return the control's waiter served first, or None when none waits."""
        for waiter in self._owners.get(control._key if self.order == FAIR else None, []):
            if waiter.job.control is control:
                return waiter
        return None

    def last_of(self, control: ImageControl) -> _Waiter | None:
        """Return the waiter of the control's owner served last, or None when none waits."""
        waiters = [w for w in self._owners.get(control._key if self.order == FAIR else None, [])
                   if w.job.control._key == control._key]
        return max(waiters, key=self.position, default=None)

    def _turn(self, waiter: _Waiter) -> Hashable:
        return waiter.job.control._key if self.order == FAIR else None

    def _forget(self, waiter: _Waiter) -> None:
        key = waiter.job.control._key
        self._waiting[key] -= 1
        if not self._waiting[key]:
            del self._waiting[key]


class _ProgressWatch:
    """Poll the instance running a job for its progress, about once a second, until the job ends."""

    def __init__(self, control: ImageControl, endpoint: SDEndpoint, every: float, timeout: float) -> None:
        self._control, self._endpoint, self._every, self._timeout = control, endpoint, every, timeout
        self._ended = threading.Event()
        self._emitting = threading.Lock()  # no progress is heard once the job ended
        threading.Thread(target=self._watch, daemon=True, name=f"sd-progress-{endpoint.name}").start()

    def end(self) -> None:
        """Stop polling; a poll in flight is dropped."""
        with self._emitting:
            self._ended.set()

    def _watch(self) -> None:
        name = self._endpoint.name
        while not self._ended.wait(self._every):
            try:
                seen = progress(self._endpoint, skip_current_image=not self._control.preview, timeout=self._timeout)
            except SDError as e:  # progress is a courtesy: the job itself decides how it went
                log.debug("SD instance %s: progress poll failed: %s", name, e)
                continue
            with self._emitting:
                # The job ended before the answer came: it may be another job's progress.
                if self._ended.is_set():
                    return
                if seen.running:
                    self._control._emit("progress", {
                        "instance": name, "progress": seen.progress, "eta": seen.eta, "step": seen.step,
                        "steps": seen.steps, "preview": seen.preview if self._control.preview else None})


def _job_failed(error: SDError, job: JobContext) -> SDError:
    """Return `error` as the failure of a whole job: the same kind and message, carrying `job`."""
    return type(error)(str(error), status=error.status, job=job)




def _instance_view(name: str, state: InstanceState, *, jobs: int, failures: int, busy_seconds: float,
                   cooldowns: int, cooldown_remaining: float, last_error: str) -> dict[str, Any]:
    """Return one instance's state and counters as /metrics and /readyz show them (no credentials)."""
    return {
        "name": name,
        "state": state,
        "healthy": state not in (COOLDOWN, PROBING),  # a probe still running proves nothing yet
        "in_flight": 1 if state == BUSY else 0,
        "jobs": jobs,
        "failures": failures,
        "busy_seconds": round(busy_seconds, 3),
        "cooldowns": cooldowns,
        "cooldown_remaining": round(cooldown_remaining, 3) if state == COOLDOWN else 0.0,
        "last_error": last_error,
    }


def _down_message(views: Sequence[Mapping[str, Any]]) -> str | None:
    """Return why every instance is down when all of them cool down, else None."""
    if not views or any(view["state"] != COOLDOWN for view in views):
        return None
    causes = "; ".join(view["last_error"] for view in views)
    retry = min(view["cooldown_remaining"] for view in views)
    return f"all {len(views)} Stable Diffusion instances are down (next retry in {retry:.0f}s): {causes}"


def _too_many_queued(max_queued: int, last_position: int | None, views: Sequence[Mapping[str, Any]],
                     leases: int) -> TooManyQueued:
    """Return the refusal of an owner's image over the cap, with when its last waiting image should start."""
    retry_after = None
    up = sum(1 for view in views if view["state"] in (IDLE, BUSY))
    if last_position is not None and leases and up:
        per_job = sum(view["busy_seconds"] for view in views) / leases  # the pace jobs ran at so far
        retry_after = float(math.ceil(last_position * per_job / up))
    return TooManyQueued(f"{max_queued} images of this participant already wait for a Stable Diffusion "
                         "instance (SD_MAX_QUEUED_PER_PARTICIPANT); ask again when some are done",
                         retry_after=retry_after)


class SDInstancePool:
    """Lend WebUI instances one job at a time, fairly, with failover and cooldowns.

    Where the instances' states and the line are kept is the pool's board: in this process
    (`_LocalBoard`), or in Redis for every process of the deployment (`_RedisBoard`, when
    `shared` is core.shared.InRedis). The pool itself runs the jobs: attempts, failover,
    progress and cancel, the same on either board.
    """

    def __init__(self, endpoints: Sequence[str], *, connect_timeout: float, read_timeout: float,
                 acquire_timeout: float, cooldown: float, max_attempts: int, probe_timeout: float,
                 order: QueueOrder = FAIR, max_queued_per_owner: int = 0,
                 progress_every: float = PROGRESS_EVERY, shared: Shared | None = None) -> None:
        if order not in (FAIR, FIFO):
            raise ValueError(f"the queue order must be {FAIR!r} or {FIFO!r}, got {order!r}")
        unique: dict[str, SDEndpoint] = {}
        for url in endpoints:
            endpoint = SDEndpoint.parse(url)
            if endpoint.base_url in unique:  # two leases on one WebUI would stack its queue
                log.warning("SD_ENDPOINTS lists %s twice; using it once", endpoint.name)
            unique.setdefault(endpoint.base_url, endpoint)
        self._instances = [_Instance(endpoint) for endpoint in unique.values()]
        self._by_endpoint = {instance.endpoint: instance for instance in self._instances}
        self._timeouts = (connect_timeout, read_timeout)
        self._acquire_timeout, self._max_attempts = acquire_timeout, max(1, max_attempts)
        self._probe_timeout, self._progress_every = probe_timeout, progress_every
        self._running = threading.Lock()  # guards each job's `instance`, which cancel reads
        self._total_wait, self._last_warning = 0.0, -WARN_EVERY
        settings = {"order": order, "cooldown": cooldown, "probe_timeout": probe_timeout,
                    "max_queued": max(0, max_queued_per_owner)}
        if isinstance(shared, InRedis):
            self._board: _Board = _RedisBoard(self._instances, shared, **settings)
        else:
            self._board = _LocalBoard(self._instances, **settings)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], shared: Shared | None = None) -> SDInstancePool:
        """Build the pool from the settings (config.from_env: SD_ENDPOINTS, SD_*_TIMEOUT, ...) on `shared`."""
        return cls(
            cfg["SD_ENDPOINTS"],
            connect_timeout=cfg["SD_CONNECT_TIMEOUT"],
            read_timeout=cfg["SD_READ_TIMEOUT"],
            acquire_timeout=cfg["SD_ACQUIRE_TIMEOUT"],
            cooldown=cfg["SD_COOLDOWN"],
            max_attempts=cfg["SD_MAX_ATTEMPTS"],
            probe_timeout=cfg["SD_PROBE_TIMEOUT"],
            order=cfg["SD_QUEUE_ORDER"],
            max_queued_per_owner=cfg["SD_MAX_QUEUED_PER_PARTICIPANT"],
            shared=shared,
        )

    # -- the semaphore ----------------------------------------------------------------------
    def acquire(self, timeout: float | None = None, *, retry: bool = False) -> SDEndpoint:
        """Wait in line for a free instance and return it, leased to the caller alone.

        `timeout` defaults to the acquire timeout; `retry=True` waits at the head of the
        line. Raise PoolTimeout, AllInstancesDown, NoInstancesConfigured or PoolError (closed).
        """
        return self._lease(_Job(self, ImageControl.anonymous()), timeout, retry=retry).endpoint

    def release(self, endpoint: SDEndpoint, failure: str | None = None) -> None:
        """Take a leased instance back: idle again, or cooling down when `failure` names its fault."""
        instance = self._by_endpoint[endpoint]
        with instance.gate:
            self._board.give_back(instance, failure)

    # -- jobs -------------------------------------------------------------------------------
    def txt2img(self, payload: dict[str, Any], control: ImageControl | None = None) -> SDResult:
        """Run txt2img on a free instance, failing over to others; return its images.

        `control` names the job's owner, hears its events and may cancel it (SDCancelled);
        without one the job is an owner of its own. The SDError a failed job raises
        carries its `job`: the instance tried last and why each attempt failed.
        """
        job = _Job(self, ImageControl.anonymous() if control is None else control)
        job.control._attach(job)
        try:
            return self._run(job, payload)
        finally:
            job.control._detach(job)

    @property
    def size(self) -> int:
        """How many instances are configured."""
        return len(self._instances)

    def queue_position(self, control: ImageControl) -> int | None:
        """Return the 1-based place in line of the control's first waiting image, None when none waits."""
        return self._board.position(control)

    def _run(self, job: _Job, payload: dict[str, Any]) -> SDResult:
        deadline = time.monotonic() + self._acquire_timeout
        tried, waited, last = JobContext(), 0.0, None
        for attempt in range(1, self._max_attempts + 1):
            asked = time.monotonic()
            try:
                # A retry goes back to the head of the line: it arrived before every waiter.
                instance = self._lease(job, deadline - asked, retry=bool(tried.errors))
            except SDCancelled as e:
                raise SDCancelled(str(e), job=tried) from e
            except PoolError as e:
                if not tried.errors:
                    raise  # nothing was tried: the pool's own error is the whole story
                raise type(e)(f"{e}; earlier attempts: {'; '.join(tried.errors)}", job=tried) from e
            started = time.monotonic()
            waited += started - asked
            try:
                generation = self._attempt(job, instance, payload)
            except SDError as e:
                tried, last = JobContext(instance.endpoint.name, (*tried.errors, str(e))), e
                if not isinstance(e, INSTANCE_FAILURES):  # our payload's fault, or cancelled: not retried
                    raise _job_failed(e, tried) from e
                log.warning("SD job attempt %d of %d failed: %s", attempt, self._max_attempts, e)
                continue
            return SDResult(generation.images, generation.info, instance.endpoint.name,
                            time.monotonic() - started, waited, attempt, list(tried.errors))
        # Every attempt failed. If that left no instance up, say so: it is the cause to act on.
        down = _down_message(self._board.views())
        if down is not None:
            raise AllInstancesDown(down, job=tried) from last
        assert last is not None  # the loop only ends after a failed attempt
        raise _job_failed(last, tried) from last

    def _lease(self, job: _Job, timeout: float | None, *, retry: bool) -> _Instance:
        """Wait in line for an instance for `job` and return it, the job now running on it."""
        if not self._instances:
            raise NoInstancesConfigured("no Stable Diffusion instance is configured: set SD_ENDPOINTS")
        timeout = self._acquire_timeout if timeout is None else timeout
        start = time.monotonic()
        instance = self._board.lease(job, max(0.0, timeout), retry=retry)
        self._account_wait(time.monotonic() - start)
        return instance

    def _attempt(self, job: _Job, instance: _Instance, payload: dict[str, Any]) -> Generation:
        """Run one attempt on a leased instance, watching its progress, and give the instance back."""
        control, name = job.control, instance.endpoint.name
        control._emit("started", {"instance": name})
        watch = None
        if control.on_event is not None:
            watch = _ProgressWatch(control, instance.endpoint, self._progress_every, self._probe_timeout)
        failure, ok, kept = None, False, True
        try:
            if control.cancelled:  # read after `job.instance` was set: a cancel either sees it or is seen here
                raise SDCancelled(f"the generation was cancelled before SD instance {name} began the image")
            try:
                generation = text2Image(instance.endpoint, payload, timeout=self._timeouts)
            except SDError as e:
                if not control.cancelled:
                    failure = str(e) if isinstance(e, INSTANCE_FAILURES) else None
                    raise
                # The interrupt cut the answer short: it says nothing about the instance.
                raise SDCancelled(f"the generation was cancelled while SD instance {name} drew the image") from e
            if control.cancelled:  # what an interrupted WebUI returns is a half-denoised picture
                raise SDCancelled(f"the generation was cancelled while SD instance {name} drew the image")
            ok = True
        finally:
            if watch is not None:
                watch.end()
            kept = self._give_back(job, instance, failure)
            control._emit("finished", {"instance": name, "ok": ok and kept})
        if not kept:  # reaped as a dead process's: the reaper may have interrupted the image
            raise SDLeaseLost(f"the lease of SD instance {name} expired while it drew the image (this process did "
                              "not renew it in time), so the image is drawn again")
        return generation

    def _give_back(self, job: _Job, instance: _Instance, failure: str | None) -> bool:
        """Give the instance back once no interrupt is on its way to it (the gate), so none reaches the next job.

        Return whether the lease was still the job's (the board's `give_back`).
        """
        with instance.gate:
            with self._running:
                job.instance = None
            return self._board.give_back(instance, failure)

    def _cancel(self, job: _Job) -> None:
        """Take a cancelled job out of the line, or interrupt the instance running it."""
        if self._board.withdraw(job, SDCancelled("the generation was cancelled while the image waited for an "
                                                 "instance")):
            return
        with self._running:
            instance = job.instance
        if instance is not None:
            self._interrupt(job, instance)

    def _interrupt(self, job: _Job, instance: _Instance) -> None:
        """Send POST /sdapi/v1/interrupt to the instance if it still runs `job` (and hold it until sent)."""
        with instance.gate:
            with self._running:
                if job.instance is not instance:  # it ended first: the instance may run another's job now
                    return
            try:
                interrupt(instance.endpoint, timeout=self._probe_timeout)
            except SDError as e:  # the job then runs to its end and is thrown away
                log.warning("could not interrupt a cancelled job: %s", e)

    def _account_wait(self, waited: float) -> None:
        with self._running:
            self._total_wait += waited
            warn = waited >= WARN_WAIT and time.monotonic() - self._last_warning >= WARN_EVERY
            if warn:
                self._last_warning = time.monotonic()
        if warn:
            log.warning("an SD job waited %.1fs for a free instance (%d instances, %d jobs still waiting); "
                        "add WebUI instances to SD_ENDPOINTS", waited, len(self._instances), self._board.waiting())

    # -- health, metrics and shutdown -------------------------------------------------------
    def probe_due(self) -> None:
        """Start health probes of instances whose cooldown is over; return at once.

        Probes otherwise start only when a job asks for an instance, so a health check calls
        this to let a fully-down pool recover while no traffic reaches it.
        """
        self._board.probe_due()

    def snapshot(self) -> dict[str, Any]:
        """Return the pool's counters and each instance's state (no network, no credentials on the local board)."""
        with self._running:
            total_wait = self._total_wait
        return {**self._board.snapshot(), "total_queue_wait": round(total_wait, 3)}

    def close(self) -> None:
        """Refuse new leases, wake every waiter with PoolError and wait for running probes."""
        self._board.close()


class _Board:
    """Where a pool keeps its instances' states and its line, and who hands out instances.

    `lease` waits in line and returns the instance leased to the job; `give_back` ends a
    lease (idle, or cooling down after `failure`); `withdraw` takes a waiting job out of line
    and wakes it with `error`; an instance whose cooldown is over is probed (GET /internal/ping)
    before it is leased again.
    """

    order: QueueOrder

    def lease(self, job: _Job, timeout: float, *, retry: bool) -> _Instance:
        raise NotImplementedError

    def give_back(self, instance: _Instance, failure: str | None) -> bool:
        """End a lease; return False when it had expired and was reaped before (its job's work is not to be trusted)."""
        raise NotImplementedError

    def withdraw(self, job: _Job, error: SDError) -> bool:
        """Take `job` out of the line, waking it with `error`; return False when it did not wait."""
        raise NotImplementedError

    def position(self, control: ImageControl) -> int | None:
        raise NotImplementedError

    def waiting(self) -> int:
        """Return how many images wait in line."""
        raise NotImplementedError

    def views(self) -> list[dict[str, Any]]:
        """Return each instance's `_instance_view`."""
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def probe_due(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _timeout_message(self, timeout: float, instances: int) -> str:
        return (f"no Stable Diffusion instance became free within {timeout:g}s "
                f"({instances} instances, {self.waiting()} other jobs waiting); "
                "add instances to SD_ENDPOINTS or raise SD_ACQUIRE_TIMEOUT")


class _LocalBoard(_Board):
    """The board of a pool alone in its process: the instances' states and the line in memory, under one lock.

    Waiters stand in one `_Line`, and whoever frees an instance hands it straight to the head
    of the line under the lock, so a thread arriving later can never barge in ahead of the
    line's order (a bare Condition would let it). Each waiter sleeps on its own Event, waking
    at its deadline or when a cooldown ends, to start that instance's probe.
    """

    def __init__(self, instances: list[_Instance], *, order: QueueOrder, cooldown: float, probe_timeout: float,
                 max_queued: int) -> None:
        self.order = order
        self._instances = instances
        self._idle = deque(instances)  # least recently used first
        self._line = _Line(order)
        self._lock = threading.Lock()
        self._cooldown, self._probe_timeout, self._max_queued = cooldown, probe_timeout, max_queued
        self._leases, self._closed = 0, False
        self._probes: set[threading.Thread] = set()

    def lease(self, job: _Job, timeout: float, *, retry: bool) -> _Instance:
        deadline, waiter = time.monotonic() + timeout, _Waiter(job)
        with self._lock:
            if self._closed:
                raise PoolError("the Stable Diffusion pool is closed")
            if job.control.cancelled:  # checked under the lock that cancel() takes to find waiters
                raise SDCancelled("the generation was cancelled before this image got an instance")
            self._line.add(waiter, retry=retry)
            job.waiter = waiter
            self._dispatch()
            position = None if waiter.event.is_set() else self._line.position(waiter)
            if position is not None and not retry:
                self._refuse_over_cap(waiter)
            pause = self._pause(deadline)
        if position is not None:
            job.control._emit("queued", {"position": position})
        # Wake at the deadline or when a cooldown ends (to start its probe), else when served.
        while not waiter.event.wait(pause):
            with self._lock:
                if waiter.event.is_set():
                    break
                if time.monotonic() >= deadline:
                    self._line.remove(waiter)
                    job.waiter = None
                    raise PoolTimeout(self._timeout_message(timeout, len(self._instances)))
                self._dispatch()
                pause = self._pause(deadline)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.instance is not None
        return waiter.instance

    def give_back(self, instance: _Instance, failure: str | None) -> bool:
        with self._lock:
            if instance.state != BUSY:  # a second release would hand one instance to two jobs
                raise ValueError(f"SD instance {instance.endpoint.name} is not leased")
            instance.busy_seconds += time.monotonic() - instance.leased_at
            self._leases += 1
            if failure is None:
                instance.jobs += 1
                instance.state = IDLE
                self._idle.append(instance)
            else:
                instance.failures += 1
                self._cool(instance, failure)
            self._dispatch()
            return True  # a lease in this process never expires

    def withdraw(self, job: _Job, error: SDError) -> bool:
        with self._lock:
            waiter = job.waiter
            if waiter is None or not self._line.remove(waiter):
                return False
            waiter.serve(error=error)
            return True

    def position(self, control: ImageControl) -> int | None:
        with self._lock:
            waiter = self._line.first_of(control)
            return None if waiter is None else self._line.position(waiter)

    def waiting(self) -> int:
        return len(self._line)

    def views(self) -> list[dict[str, Any]]:
        with self._lock:
            now = time.monotonic()
            return [instance.view(now) for instance in self._instances]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            return {"instances": [instance.view(now) for instance in self._instances], "waiting": len(self._line),
                    "order": self.order, "leases": self._leases, "closed": self._closed, "shared": "process"}

    def probe_due(self) -> None:
        with self._lock:
            self._dispatch()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for waiter in self._line.drain():
                waiter.serve(error=PoolError("the Stable Diffusion pool is closed"))
            probes = list(self._probes)
        for thread in probes:
            thread.join(self._probe_timeout + 1.0)

    def _probe(self, instance: _Instance) -> None:
        """Ping an instance whose cooldown is over (on its own short thread, so no job waits for it)."""
        failure = _probe_failure(instance.endpoint, self._probe_timeout)
        with self._lock:
            self._probes.discard(threading.current_thread())
            if failure is None:
                log.info("SD instance %s answers again; back in the pool", instance.endpoint.name)
                instance.state = IDLE
                self._idle.append(instance)
            else:
                self._cool(instance, failure)
            self._dispatch()

    # -- under the lock ---------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Hand idle instances to the waiters first in line, probe due ones, fail waiters if all are down."""
        now = time.monotonic()
        while self._line and self._idle:
            instance = self._idle.popleft()
            instance.state, instance.leased_at = BUSY, now
            self._line.pop().serve(instance)
        for instance in self._instances:
            if instance.due(now) and not self._closed:
                instance.state = PROBING
                thread = threading.Thread(target=self._probe, args=(instance,), daemon=True,
                                          name=f"sd-probe-{instance.endpoint.name}")
                self._probes.add(thread)
                thread.start()
        if self._line:
            message = _down_message([instance.view(now) for instance in self._instances])
            if message is not None:
                for waiter in self._line.drain():
                    waiter.serve(error=AllInstancesDown(message))

    def _refuse_over_cap(self, waiter: _Waiter) -> None:
        """Take `waiter` out of line and raise TooManyQueued if its owner now has too many images waiting."""
        control = waiter.job.control
        if not self._max_queued or self._line.waiting(control) <= self._max_queued:
            return
        self._line.remove(waiter)
        waiter.job.waiter = None
        last = self._line.last_of(control)
        now = time.monotonic()
        raise _too_many_queued(self._max_queued, None if last is None else self._line.position(last),
                               [instance.view(now) for instance in self._instances], self._leases)

    def _pause(self, deadline: float) -> float:
        """Return how long a waiter may sleep: until its deadline or the next cooldown ends."""
        now = time.monotonic()
        ends = [i.cooldown_until for i in self._instances if i.state == COOLDOWN]
        return max(0.0, min([deadline - now, *(end - now + 0.001 for end in ends)]))

    def _cool(self, instance: _Instance, cause: str) -> None:
        instance.state, instance.cooldown_until = COOLDOWN, time.monotonic() + self._cooldown
        instance.cooldowns += 1
        instance.last_error = cause
        log.warning("SD instance %s set aside for %gs: %s", instance.endpoint.name, self._cooldown, cause)


def _probe_failure(endpoint: SDEndpoint, timeout: float) -> str | None:
    """Ping an instance; return why it failed, or None when it answers."""
    try:
        ping(endpoint, timeout=timeout)
        return None
    except Exception as e:  # any failure keeps the instance out, whatever its kind
        return f"probe failed: {e}"


# -- the board in Redis ---------------------------------------------------------------------
# Every script starts with this: the common arguments, Redis's clock, and the steps they share.
# ARGV: the board's key prefix, the process-key prefix, the lease's ttl and the probe's (ms),
# the number of instances and their names, then the script's own arguments from ARGV[A].
_LUA_STEPS = """
local P, PROC = ARGV[1], ARGV[2]
local TTL, PROBE_TTL = tonumber(ARGV[3]), tonumber(ARGV[4])
local NAMES = {}
for i = 1, tonumber(ARGV[5]) do NAMES[i] = ARGV[5 + i] end
local A = 6 + #NAMES
local clock = redis.call('TIME')
local NOW = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function ikey(name) return P .. 'instance:' .. name end
local function ticket_of(member) return string.match(member, '([^:]+)$') end

local function grant(ticket, value)
  local key = P .. 'grant:' .. ticket
  redis.call('RPUSH', key, value)
  redis.call('PEXPIRE', key, TTL)
end

-- Take a ticket out of line; return what was kept of it, or nil when it no longer waits.
local function take(ticket)
  local raw = redis.call('HGET', P .. 'tickets', ticket)
  if not raw then return nil end
  local rec = cjson.decode(raw)
  redis.call('HDEL', P .. 'tickets', ticket)
  local line = P .. 'line:' .. rec.turn
  redis.call('ZREM', line, rec.member)
  if redis.call('ZCARD', line) == 0 then redis.call('LREM', P .. 'owners', 0, rec.turn) end
  if redis.call('HINCRBY', P .. 'waiting', rec.owner, -1) <= 0 then redis.call('HDEL', P .. 'waiting', rec.owner) end
  return rec
end

-- The 1-based place of a waiting ticket, if nobody else arrives: every turn is served once per
-- round for `index` rounds, then the turns before its own in that round.
local function position(rec)
  local index = redis.call('ZRANK', P .. 'line:' .. rec.turn, rec.member)
  if not index then return nil end
  local ahead, before = 0, true
  for _, turn in ipairs(redis.call('LRANGE', P .. 'owners', 0, -1)) do
    local n = redis.call('ZCARD', P .. 'line:' .. turn)
    ahead = ahead + math.min(n, index)
    if turn == rec.turn then before = false elseif before and n > index then ahead = ahead + 1 end
  end
  return ahead + 1
end

local function cool(name, cause, ms)
  redis.call('HSET', ikey(name), 'state', 'cooldown', 'until', NOW + ms, 'holder', '', 'last_error', cause)
  redis.call('HINCRBY', ikey(name), 'cooldowns', 1)
end

-- Hand idle instances to the line's first waiters, owners in turn; set due instances probing
-- (a cooldown over, a probe that never reported, a lease its process stopped renewing); fail
-- every waiter when every instance cools down. Return the probes to start, as name, why pairs.
local function dispatch()
  local probes, idle, cooling = {}, {}, 0
  for _, name in ipairs(NAMES) do
    local h = redis.call('HMGET', ikey(name), 'state', 'until', 'lru')
    local state, ends = h[1] or 'idle', tonumber(h[2]) or 0
    if state == 'busy' and ends <= NOW then
      redis.call('HSET', ikey(name), 'state', 'probing', 'until', NOW + PROBE_TTL, 'holder', '',
                 'last_error', 'its lease expired: the process holding it stopped renewing it')
      probes[#probes + 1] = name; probes[#probes + 1] = 'expired'; state = 'probing'
    elseif (state == 'cooldown' or state == 'probing') and ends <= NOW then
      redis.call('HSET', ikey(name), 'state', 'probing', 'until', NOW + PROBE_TTL)
      probes[#probes + 1] = name; probes[#probes + 1] = 'due'; state = 'probing'
    end
    if state == 'cooldown' then cooling = cooling + 1 end
    if state == 'idle' then idle[#idle + 1] = {name, tonumber(h[3]) or 0} end
  end
  table.sort(idle, function(a, b) return a[2] < b[2] end)  -- least recently used first
  local owners, free = P .. 'owners', 1
  while free <= #idle do
    local turn = redis.call('LINDEX', owners, 0)
    if not turn then break end
    local member = redis.call('ZRANGE', P .. 'line:' .. turn, 0, 0)[1]
    if not member then
      redis.call('LPOP', owners)
    else
      local ticket = ticket_of(member)
      local rec = take(ticket)
      if rec == nil then redis.call('ZREM', P .. 'line:' .. turn, member) end
      if redis.call('LINDEX', owners, 0) == turn then redis.call('LMOVE', owners, owners, 'LEFT', 'RIGHT') end
      -- A waiter whose process is gone is skipped: nobody would run its job. Told so, in case
      -- its process only missed its beats and still waits: it then stands in line again.
      if rec ~= nil and redis.call('EXISTS', PROC .. rec.process) == 1 then
        local name = idle[free][1]
        free = free + 1
        redis.call('HSET', ikey(name), 'state', 'busy', 'until', NOW + TTL, 'holder', ticket, 'leased_at', NOW)
        grant(ticket, 'ok:' .. name)
      elseif rec ~= nil then
        grant(ticket, 'lapsed')
      end
    end
  end
  if #NAMES > 0 and cooling == #NAMES then
    for _, turn in ipairs(redis.call('LRANGE', owners, 0, -1)) do
      for _, member in ipairs(redis.call('ZRANGE', P .. 'line:' .. turn, 0, -1)) do
        local ticket = ticket_of(member)
        take(ticket)
        grant(ticket, 'down')
      end
    end
  end
  return probes
end

-- Milliseconds until the first cooldown or probe ends (a waiter wakes then to dispatch), or -1.
local function next_wake()
  local soonest = -1
  for _, name in ipairs(NAMES) do
    local h = redis.call('HMGET', ikey(name), 'state', 'until')
    if h[1] == 'cooldown' or h[1] == 'probing' then
      local left = math.max(1, (tonumber(h[2]) or 0) - NOW)
      if soonest < 0 or left < soonest then soonest = left end
    end
  end
  return soonest
end

local function with_probes(head, probes)
  for _, item in ipairs(probes) do head[#head + 1] = item end
  return head
end
"""

_LUA = {
    # ticket, turn, owner, begun, process, retry, max_queued -> {'served'} | {'full', last position}
    # | {'queued', position, next wake}, then the probes to start.
    "lease": """
local ticket, turn, owner, begun, process = ARGV[A], ARGV[A + 1], ARGV[A + 2], ARGV[A + 3], ARGV[A + 4]
local retry, max_queued = ARGV[A + 5] == '1', tonumber(ARGV[A + 6])
local arrival = string.format('%016d', redis.call('INCR', P .. 'arrivals'))
-- A retry goes first within its owner, and its owner next: it arrived before every waiter.
local member = retry and ('0:' .. arrival .. ':' .. ticket) or ('1:' .. begun .. ':' .. arrival .. ':' .. ticket)
local line = P .. 'line:' .. turn
redis.call('ZADD', line, 0, member)
redis.call('HSET', P .. 'tickets', ticket, cjson.encode({turn = turn, owner = owner, process = process, member = member}))
local count = redis.call('HINCRBY', P .. 'waiting', owner, 1)
if retry then
  redis.call('LREM', P .. 'owners', 0, turn)
  redis.call('LPUSH', P .. 'owners', turn)
elseif redis.call('ZCARD', line) == 1 then
  redis.call('RPUSH', P .. 'owners', turn)
end
local probes = dispatch()
local raw = redis.call('HGET', P .. 'tickets', ticket)
if not raw then return with_probes({'served'}, probes) end
local rec = cjson.decode(raw)
if not retry and max_queued > 0 and count > max_queued then
  take(ticket)
  local last = -1
  for _, other in ipairs(redis.call('ZRANGE', line, 0, -1)) do
    local kept = redis.call('HGET', P .. 'tickets', ticket_of(other))
    if kept and cjson.decode(kept).owner == owner then last = math.max(last, position(cjson.decode(kept))) end
  end
  return with_probes({'full', last}, probes)
end
return with_probes({'queued', position(rec), next_wake()}, probes)
""",
    # tickets... -> the smallest place in line of those still waiting, or -1
    "position": """
local best = -1
for i = A, #ARGV do
  local raw = redis.call('HGET', P .. 'tickets', ARGV[i])
  if raw then
    local at = position(cjson.decode(raw))
    if at and (best < 0 or at < best) then best = at end
  end
end
return best
""",
    # ticket, value -> 1 when it waited (and is woken with `value` unless empty), else 0
    "withdraw": """
if take(ARGV[A]) == nil then return 0 end
if ARGV[A + 1] ~= '' then grant(ARGV[A], ARGV[A + 1]) end
return 1
""",
    # name, ticket, failure ('' when it did its job), cooldown ms -> {1 if the lease was still its own}, probes
    "give_back": """
local name, ticket, failure = ARGV[A], ARGV[A + 1], ARGV[A + 2]
local h = redis.call('HMGET', ikey(name), 'state', 'holder', 'leased_at')
local kept = h[1] == 'busy' and h[2] == ticket
if kept then
  redis.call('HINCRBY', ikey(name), 'busy_ms', NOW - (tonumber(h[3]) or NOW))
  redis.call('HINCRBY', P .. 'stats', 'leases', 1)
  if failure == '' then
    redis.call('HINCRBY', ikey(name), 'jobs', 1)
    redis.call('HSET', ikey(name), 'state', 'idle', 'holder', '', 'lru', NOW)
  else
    redis.call('HINCRBY', ikey(name), 'failures', 1)
    cool(name, failure, tonumber(ARGV[A + 3]))
  end
end
return with_probes({kept and 1 or 0}, dispatch())
""",
    # name, failure ('' when it answered), cooldown ms -> probes
    "probed": """
local name, failure = ARGV[A], ARGV[A + 1]
if redis.call('HGET', ikey(name), 'state') == 'probing' then
  if failure == '' then
    redis.call('HSET', ikey(name), 'state', 'idle', 'lru', NOW)
  else
    cool(name, failure, tonumber(ARGV[A + 2]))
  end
end
return dispatch()
""",
    # (name, ticket) pairs of the leases this process holds -> probes
    "renew": """
for i = A, #ARGV, 2 do
  local h = redis.call('HMGET', ikey(ARGV[i]), 'state', 'holder')
  if h[1] == 'busy' and h[2] == ARGV[i + 1] then redis.call('HSET', ikey(ARGV[i]), 'until', NOW + TTL) end
end
return dispatch()
""",
    # -> {next wake}, probes
    "dispatch": """
local probes = dispatch()
return with_probes({next_wake()}, probes)
""",
}

REAP_WAIT = 30.0  # seconds a reaped instance may take to end the image of the process that died
LAPSED = "lapsed"  # the grant of a ticket whose turn came while its process was taken for dead


class _RedisBoard(_Board):
    """The board of a pool shared by every process of a deployment: the states and the line in Redis.

    Each step is one Lua script (`_LUA`), so processes never see half of one. A waiter's
    ticket stands in line in Redis; whoever frees an instance runs the dispatch, which leases
    it to the first ticket whose process is alive and pushes the grant onto that ticket's
    list, on which its waiter blocks (BLPOP) until then, its deadline, or the end of a
    cooldown (to dispatch the probe). A lease lasts the shared ttl and the process holding it
    renews it on every beat of its liveness (core.shared); a lease not renewed, its process
    killed, is reaped by the next dispatch (every process's beats run one): the instance is
    interrupted, since it may still draw the dead process's image, and probed before anyone
    gets it. One process probes an instance for the whole deployment.
    """

    def __init__(self, instances: list[_Instance], shared: InRedis, *, order: QueueOrder, cooldown: float,
                 probe_timeout: float, max_queued: int) -> None:
        self.order = order
        self._instances = instances
        self._by_name = {instance.endpoint.name: instance for instance in instances}
        self._shared, self._client = shared, shared.client
        self._prefix = shared.key("sd", "")
        self._cooldown_ms, self._probe_timeout, self._max_queued = int(cooldown * 1000), probe_timeout, max_queued
        probe_ttl = int((REAP_WAIT + 3 * probe_timeout) * 1000)  # a probe that never reports is begun again
        names = list(self._by_name)
        self._head = [self._prefix, shared.process_key(""), shared.ttl_ms, probe_ttl, len(names), *names]
        self._scripts = {name: self._client.register_script(_LUA_STEPS + body) for name, body in _LUA.items()}
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}  # instance name -> the ticket its lease was granted to
        self._waiting: dict[str, _Job] = {}  # ticket -> the job of this process it stands for
        self._errors: dict[str, SDError] = {}  # ticket -> what `withdraw` woke it with
        self._probes: set[threading.Thread] = set()
        self._closed = False
        shared.on_beat(self._beat)

    def _run(self, script: str, *args: Any) -> Any:
        with self._shared.reaching():
            return self._scripts[script](args=[*self._head, *args])

    def lease(self, job: _Job, timeout: float, *, retry: bool) -> _Instance:
        deadline, control = time.monotonic() + timeout, job.control
        if self._closed:
            raise PoolError("the Stable Diffusion pool is closed")
        if control.cancelled:
            raise SDCancelled("the generation was cancelled before this image got an instance")
        ticket = uuid.uuid4().hex
        with self._lock:
            self._waiting[ticket] = job
        job.ticket = ticket
        try:
            wake = self._stand(job, ticket, retry)
            if control.cancelled:  # a cancel that looked for the ticket before it stood in line
                self.withdraw(job, SDCancelled("the generation was cancelled before this image got an instance"))
            return self._wait(job, ticket, deadline, timeout, wake)
        except SharedUnavailable:
            # If it still stands in line, a dispatch would grant it an instance nobody takes.
            try:
                self._run("withdraw", ticket, "")
            except SharedUnavailable:  # its grant expires with the ttl, and its lease is reaped
                pass
            raise
        finally:
            job.ticket = None
            with self._lock:
                self._waiting.pop(ticket, None)
                self._errors.pop(ticket, None)

    def _stand(self, job: _Job, ticket: str, retry: bool) -> int:
        """Put the ticket in line (served at once if it can be); return ms until its waiter should dispatch, or -1."""
        control = job.control
        reply = self._run("lease", ticket, control._key if self.order == FAIR else "", control._key,
                          f"{control._begun if self.order == FAIR else 0:020d}", self._shared.process,
                          "1" if retry else "0", self._max_queued)
        outcome = reply[0]
        if outcome == "full":
            self._start_probes(reply[2:])
            raise _too_many_queued(self._max_queued, reply[1] if reply[1] > 0 else None, self.views(),
                                   self._leases())
        if outcome == "queued":
            self._start_probes(reply[3:])
            control._emit("queued", {"position": reply[1]})
            return reply[2]
        self._start_probes(reply[1:])
        return -1

    def _wait(self, job: _Job, ticket: str, deadline: float, timeout: float, wake: int) -> _Instance:
        """Block on the ticket's grant until it comes, the deadline, or a cooldown's end (to dispatch)."""
        grant_key = self._prefix + "grant:" + ticket
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if self._run("withdraw", ticket, "") == 1:
                    raise PoolTimeout(self._timeout_message(timeout, len(self._instances)))
                with self._shared.reaching():
                    value = self._client.lpop(grant_key)  # served as it timed out: the grant is there
                if value is not None and value != LAPSED:
                    return self._granted(job, ticket, value)
                raise PoolTimeout(self._timeout_message(timeout, len(self._instances)))
            block = left if wake < 0 else min(left, wake / 1000)
            with self._shared.reaching():
                got = self._shared.blocking.blpop([grant_key], timeout=max(0.01, block))
            if got is not None and got[1] == LAPSED:
                # Its turn came while this process was taken for dead (it missed its beats for the
                # ttl): alive after all, it says so and stands in line again, first, as it arrived early.
                self._shared.beat()
                wake = self._stand(job, ticket, retry=True)
                continue
            if got is not None:
                return self._granted(job, ticket, got[1])
            if time.monotonic() < deadline:
                reply = self._run("dispatch")
                wake = reply[0]
                self._start_probes(reply[1:])

    def _granted(self, job: _Job, ticket: str, value: str) -> _Instance:
        """Return the instance a grant names, now the job's, or raise what it says instead."""
        if value.startswith("ok:"):
            name = value[3:]
            with self._lock:
                self._held[name] = ticket
            job.instance = self._by_name[name]
            return job.instance
        if value == "down":
            raise AllInstancesDown(_down_message(self.views()) or "all Stable Diffusion instances are down")
        with self._lock:
            error = self._errors.pop(ticket, None)
        raise error if error is not None else PoolError(f"the line answered {value!r}")

    def give_back(self, instance: _Instance, failure: str | None) -> bool:
        name = instance.endpoint.name
        with self._lock:
            ticket = self._held.pop(name, None)
        if ticket is None:  # a second release would hand one instance to two jobs
            raise ValueError(f"SD instance {name} is not leased")
        try:
            reply = self._run("give_back", name, ticket, failure or "", self._cooldown_ms)
        except SharedUnavailable as error:  # the job is done: the lease, no longer renewed, expires and is reaped
            log.warning("SD instance %s: could not give its lease back: %s", name, error)
            return True
        if failure is not None:
            log.warning("SD instance %s set aside for %gs: %s", name, self._cooldown_ms / 1000, failure)
        self._start_probes(reply[1:])
        if reply[0] != 1:
            log.warning("SD instance %s: the lease had expired before its job ended (this process did not renew "
                        "it for %gs); it was reaped", name, self._shared.ttl)
            return False
        return True

    def withdraw(self, job: _Job, error: SDError) -> bool:
        ticket = job.ticket
        if ticket is None:
            return False
        with self._lock:
            self._errors[ticket] = error
        if self._run("withdraw", ticket, "error") == 1:
            return True
        with self._lock:
            self._errors.pop(ticket, None)
        return False

    def position(self, control: ImageControl) -> int | None:
        with self._lock:
            tickets = [ticket for ticket, job in self._waiting.items() if job.control is control]
        if not tickets:
            return None
        place = self._run("position", *tickets)
        return None if place < 0 else place

    def waiting(self) -> int:
        with self._shared.reaching():
            return sum(int(count) for count in self._client.hvals(self._prefix + "waiting"))

    def _leases(self) -> int:
        with self._shared.reaching():
            return int(self._client.hget(self._prefix + "stats", "leases") or 0)

    def views(self) -> list[dict[str, Any]]:
        pipe = self._client.pipeline(transaction=False)
        pipe.time()
        for name in self._by_name:
            pipe.hgetall(self._prefix + "instance:" + name)
        with self._shared.reaching():
            clock, *states = pipe.execute()
        now = clock[0] * 1000 + clock[1] // 1000
        views = []
        for name, h in zip(self._by_name, states):
            state = h.get("state") or IDLE
            views.append(_instance_view(
                name, state if state in (IDLE, BUSY, COOLDOWN, PROBING) else IDLE,  # type: ignore[arg-type]
                jobs=int(h.get("jobs") or 0), failures=int(h.get("failures") or 0),
                busy_seconds=(int(h.get("busy_ms") or 0) + (now - int(h.get("leased_at") or now)
                                                             if state == BUSY else 0)) / 1000,
                cooldowns=int(h.get("cooldowns") or 0),
                cooldown_remaining=max(0, int(h.get("until") or 0) - now) / 1000,
                last_error=h.get("last_error") or ""))
        return views

    def snapshot(self) -> dict[str, Any]:
        return {"instances": self.views(), "waiting": self.waiting(), "order": self.order, "leases": self._leases(),
                "closed": self._closed, "shared": "redis"}

    def probe_due(self) -> None:
        self._start_probes(self._run("dispatch")[1:])

    def close(self) -> None:
        self._closed = True
        with self._lock:
            waiting = list(self._waiting.values())
        for job in waiting:
            try:
                self.withdraw(job, PoolError("the Stable Diffusion pool is closed"))
            except SharedUnavailable as error:  # its waiter fails on its own when its wait does
                log.warning("closing the SD pool: %s", error)
                break
        with self._lock:
            probes = list(self._probes)
        for thread in probes:
            thread.join(self._probe_timeout * 3 + 1.0)

    def _beat(self) -> None:
        """Renew the leases this process holds, and dispatch (reaping leases whose process stopped beating)."""
        with self._lock:
            held = [item for name, ticket in self._held.items() for item in (name, ticket)]
        self._start_probes(self._run("renew", *held))

    def _start_probes(self, pairs: Sequence[str]) -> None:
        """Start the probes a dispatch handed this process, each on its own short thread."""
        if self._closed:
            return  # they are begun again by a dispatch elsewhere once their probe time is over
        for name, why in zip(pairs[::2], pairs[1::2]):
            thread = threading.Thread(target=self._probe, args=(self._by_name[name], why), daemon=True,
                                      name=f"sd-probe-{name}")
            with self._lock:
                self._probes.add(thread)
            thread.start()

    def _probe(self, instance: _Instance, why: str) -> None:
        """Probe an instance the dispatch set probing; after a reaped lease, first end the dead process's image."""
        endpoint = instance.endpoint
        if why == "expired":
            log.warning("SD instance %s: the process holding its lease stopped; interrupting what it drew",
                        endpoint.name)
            _end_orphan(endpoint, self._probe_timeout)
        failure = _probe_failure(endpoint, self._probe_timeout)
        try:
            probes = self._run("probed", endpoint.name, failure or "", self._cooldown_ms)
        except Exception:  # the probe is begun again elsewhere once its time is over
            log.warning("SD instance %s: could not report its probe", endpoint.name, exc_info=True)
            probes = []
        if failure is None:
            log.info("SD instance %s answers; in the pool", endpoint.name)
        else:
            log.warning("SD instance %s set aside for %gs: %s", endpoint.name, self._cooldown_ms / 1000, failure)
        with self._lock:
            self._probes.discard(threading.current_thread())
        self._start_probes(probes)


def _end_orphan(endpoint: SDEndpoint, timeout: float) -> None:
    """Interrupt the image an instance draws for nobody, and wait (up to REAP_WAIT) until it has stopped.

    A WebUI draws an image to its end even when the client that asked is gone; the next job
    sent to it would queue behind that image, two jobs on one instance.
    """
    try:
        interrupt(endpoint, timeout=timeout)
    except SDError as e:
        log.warning("SD instance %s: could not interrupt the orphaned image: %s", endpoint.name, e)
        return
    deadline = time.monotonic() + REAP_WAIT
    while time.monotonic() < deadline:
        try:
            if not progress(endpoint, timeout=timeout).running:
                return
        except SDError:
            return  # the probe that follows says whether it answers
        time.sleep(0.2)  # the WebUI offers no way to wait for its job to end but asking again
