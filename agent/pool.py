"""A fair, failure-aware pool of Stable Diffusion WebUI instances shared by the whole server.

A WebUI runs one generation at a time and silently queues the rest, so sending it several
jobs stacks them on one GPU while others idle. The pool is therefore a semaphore with one
slot per instance: `acquire()` waits for a free instance and `release()` gives it back,
and `txt2img()` runs each attempt of a job between the two, releasing in a `finally`.

Waiters stand in one line, and whoever frees an instance hands it straight to the head of
the line under the lock, so a thread arriving later can never barge in ahead of the line's
order (a bare Condition would let it). Each waiter sleeps on its own Event. The line's
order is SD_QUEUE_ORDER:

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
"""
from __future__ import annotations

import bisect
import itertools
import logging
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from agent.errors import (
    INSTANCE_FAILURES, AllInstancesDown, JobContext, NoInstancesConfigured, PoolError, PoolTimeout, SDCancelled,
    SDError, TooManyQueued,
)
from agent.sd import Generation, SDEndpoint, interrupt, ping, progress, text2Image
from core.image_store import Image

log = logging.getLogger(__name__)

InstanceState = Literal["idle", "busy", "cooldown", "probing"]
IDLE, BUSY, COOLDOWN, PROBING = get_args(InstanceState)
QueueOrder = Literal["fair", "fifo"]
FAIR, FIFO = get_args(QueueOrder)
EventHandler = Callable[[str, dict[str, Any]], None]
WARN_WAIT = 30.0  # a job waiting this many seconds for an instance means the pool is too small
WARN_EVERY = 60.0  # seconds between two such warnings
PROGRESS_EVERY = 1.0  # seconds between two progress polls of the instance running a job
_begun = itertools.count()  # the order generations began in, for the line within one owner


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
        self._key: Hashable = owner  # whose turn in the fair line
        self._begun = next(_begun)
        self._lock = threading.Lock()
        self._cancelled = False
        self._jobs: set[_Job] = set()  # waiting or running now

    @classmethod
    def anonymous(cls) -> ImageControl:
        """Return a control whose owner is itself alone (a txt2img called without one)."""
        control = cls("anonymous")
        control._key = control  # no other job can share its turn
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
    """One WebUI instance: its state in the pool and its counters (changed only under the lock)."""

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

    def to_dict(self, now: float) -> dict[str, Any]:
        """Return the counters and state, for metrics (no credentials)."""
        busy = self.busy_seconds + (now - self.leased_at if self.state == BUSY else 0.0)
        return {
            "name": self.endpoint.name,
            "state": self.state,
            "healthy": self.state not in (COOLDOWN, PROBING),  # a probe still running proves nothing yet
            "in_flight": 1 if self.state == BUSY else 0,
            "jobs": self.jobs,
            "failures": self.failures,
            "busy_seconds": round(busy, 3),
            "cooldowns": self.cooldowns,
            "cooldown_remaining": round(max(0.0, self.cooldown_until - now), 3)
            if self.state == COOLDOWN else 0.0,
            "last_error": self.last_error,
        }


@dataclass(eq=False)
class _Job:
    """One txt2img call of a control: where it waits or runs now (changed only under the pool's lock)."""

    pool: SDInstancePool
    control: ImageControl
    waiter: _Waiter | None = None
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


class SDInstancePool:
    """Lend WebUI instances one job at a time, fairly, with failover and cooldowns."""

    def __init__(self, endpoints: Sequence[str], *, connect_timeout: float, read_timeout: float,
                 acquire_timeout: float, cooldown: float, max_attempts: int, probe_timeout: float,
                 order: QueueOrder = FAIR, max_queued_per_owner: int = 0,
                 progress_every: float = PROGRESS_EVERY) -> None:
        unique: dict[str, SDEndpoint] = {}
        for url in endpoints:
            endpoint = SDEndpoint.parse(url)
            if endpoint.base_url in unique:  # two leases on one WebUI would stack its queue
                log.warning("SD_ENDPOINTS lists %s twice; using it once", endpoint.name)
            unique.setdefault(endpoint.base_url, endpoint)
        self._instances = [_Instance(endpoint) for endpoint in unique.values()]
        self._by_endpoint = {instance.endpoint: instance for instance in self._instances}
        self._idle = deque(self._instances)  # least recently used first
        self._line = _Line(order)
        self._lock = threading.Lock()
        self._timeouts = (connect_timeout, read_timeout)
        self._acquire_timeout, self._max_attempts = acquire_timeout, max(1, max_attempts)
        self._cooldown, self._probe_timeout = cooldown, probe_timeout
        self._max_queued, self._progress_every = max(0, max_queued_per_owner), progress_every
        self._total_wait, self._leases, self._closed = 0.0, 0, False
        self._last_warning = -WARN_EVERY
        self._probes: set[threading.Thread] = set()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SDInstancePool:
        """Build the pool from the settings (config.from_env: SD_ENDPOINTS, SD_*_TIMEOUT, ...)."""
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
        self._give_back(self._by_endpoint[endpoint], failure)

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

    def queue_position(self, control: ImageControl) -> int | None:
        """Return the 1-based place in line of the control's first waiting image, None when none waits."""
        with self._lock:
            waiter = self._line.first_of(control)
            return None if waiter is None else self._line.position(waiter)

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
        with self._lock:
            down = self._down_message(time.monotonic()) if self._all_down() else None
        if down is not None:
            raise AllInstancesDown(down, job=tried) from last
        assert last is not None  # the loop only ends after a failed attempt
        raise _job_failed(last, tried) from last

    def _attempt(self, job: _Job, instance: _Instance, payload: dict[str, Any]) -> Generation:
        """Run one attempt on a leased instance, watching its progress, and give the instance back."""
        control, name = job.control, instance.endpoint.name
        control._emit("started", {"instance": name})
        watch = None
        if control.on_event is not None:
            watch = _ProgressWatch(control, instance.endpoint, self._progress_every, self._probe_timeout)
        failure, ok = None, False
        try:
            if control.cancelled:
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
            return generation
        finally:
            if watch is not None:
                watch.end()
            self._give_back(instance, failure, job)
            control._emit("finished", {"instance": name, "ok": ok})

    def _cancel(self, job: _Job) -> None:
        """Take a cancelled job out of the line, or interrupt the instance running it."""
        with self._lock:
            waiter = job.waiter
            if waiter is not None and self._line.remove(waiter):
                waiter.serve(error=SDCancelled("the generation was cancelled while the image waited for an "
                                               "instance"))
                return
            instance = job.instance
        if instance is not None:
            self._interrupt(job, instance)

    def _interrupt(self, job: _Job, instance: _Instance) -> None:
        """Send POST /sdapi/v1/interrupt to the instance if it still runs `job` (and hold it until sent)."""
        with instance.gate:
            with self._lock:
                if job.instance is not instance:  # it ended first: the instance may run another's job now
                    return
            try:
                interrupt(instance.endpoint, timeout=self._probe_timeout)
            except SDError as e:  # the job then runs to its end and is thrown away
                log.warning("could not interrupt a cancelled job: %s", e)

    # -- health, metrics and shutdown -------------------------------------------------------
    def probe_due(self) -> None:
        """Start health probes of instances whose cooldown is over; return at once.

        Probes otherwise start only when a job asks for an instance, so a health check calls
        this to let a fully-down pool recover while no traffic reaches it.
        """
        with self._lock:
            self._dispatch()

    def snapshot(self) -> dict[str, Any]:
        """Return the pool's counters and each instance's state (no network, no credentials)."""
        with self._lock:
            now = time.monotonic()
            return {
                "instances": [instance.to_dict(now) for instance in self._instances],
                "waiting": len(self._line),
                "order": self._line.order,
                "total_queue_wait": round(self._total_wait, 3),
                "leases": self._leases,
                "closed": self._closed,
            }

    def close(self) -> None:
        """Refuse new leases, wake every waiter with PoolError and wait for running probes."""
        with self._lock:
            self._closed = True
            for waiter in self._line.drain():
                waiter.serve(error=PoolError("the Stable Diffusion pool is closed"))
            probes = list(self._probes)
        for thread in probes:
            thread.join(self._probe_timeout + 1.0)

    # -- taking the lock themselves ---------------------------------------------------------
    def _lease(self, job: _Job, timeout: float | None, *, retry: bool) -> _Instance:
        """Wait in line for an instance for `job` and return it (`acquire`'s errors, SDCancelled, TooManyQueued)."""
        timeout = self._acquire_timeout if timeout is None else timeout
        start = time.monotonic()
        deadline, waiter = start + max(0.0, timeout), _Waiter(job)
        with self._lock:
            if self._closed:
                raise PoolError("the Stable Diffusion pool is closed")
            if not self._instances:
                raise NoInstancesConfigured("no Stable Diffusion instance is configured: set SD_ENDPOINTS")
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
                    raise PoolTimeout(self._timeout_message(timeout))
                self._dispatch()
                pause = self._pause(deadline)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.instance is not None
        self._account_wait(time.monotonic() - start)
        return waiter.instance

    def _give_back(self, instance: _Instance, failure: str | None, job: _Job | None = None) -> None:
        """Take a leased instance back once no interrupt is on its way to it (see `release`)."""
        with instance.gate, self._lock:
            if instance.state != BUSY:  # a second release would hand one instance to two jobs
                raise ValueError(f"SD instance {instance.endpoint.name} is not leased")
            if job is not None:
                job.instance = None
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

    def _probe(self, instance: _Instance) -> None:
        """Ping an instance whose cooldown is over (on its own short thread, so no job waits for it)."""
        try:
            ping(instance.endpoint, timeout=self._probe_timeout)
            failure = None
        except Exception as e:  # any failure keeps the instance out, whatever its kind
            failure = f"probe failed: {e}"
        with self._lock:
            self._probes.discard(threading.current_thread())
            if failure is None:
                log.info("SD instance %s answers again; back in the pool", instance.endpoint.name)
                instance.state = IDLE
                self._idle.append(instance)
            else:
                self._cool(instance, failure)
            self._dispatch()

    def _account_wait(self, waited: float) -> None:
        with self._lock:
            self._total_wait += waited
            warn = waited >= WARN_WAIT and time.monotonic() - self._last_warning >= WARN_EVERY
            if warn:
                self._last_warning = time.monotonic()
            waiting = len(self._line)
        if warn:
            log.warning("an SD job waited %.1fs for a free instance (%d instances, %d jobs still waiting); "
                        "add WebUI instances to SD_ENDPOINTS", waited, len(self._instances), waiting)

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
        if self._line and self._all_down():
            message = self._down_message(now)
            for waiter in self._line.drain():
                waiter.serve(error=AllInstancesDown(message))

    def _refuse_over_cap(self, waiter: _Waiter) -> None:
        """Take `waiter` out of line and raise TooManyQueued if its owner now has too many images waiting."""
        control = waiter.job.control
        if not self._max_queued or self._line.waiting(control) <= self._max_queued:
            return
        self._line.remove(waiter)
        waiter.job.waiter = None
        retry_after = None
        last = self._line.last_of(control)
        up = sum(1 for i in self._instances if i.state in (IDLE, BUSY))
        if last is not None and self._leases and up:
            # When the owner's last waiting image should start, at the pace jobs ran so far.
            per_job = sum(i.busy_seconds for i in self._instances) / self._leases
            retry_after = float(math.ceil(self._line.position(last) * per_job / up))
        raise TooManyQueued(f"{self._max_queued} images of this participant already wait for a Stable Diffusion "
                            "instance (SD_MAX_QUEUED_PER_PARTICIPANT); ask again when some are done",
                            retry_after=retry_after)

    def _all_down(self) -> bool:
        return bool(self._instances) and all(i.state == COOLDOWN for i in self._instances)

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

    def _timeout_message(self, timeout: float) -> str:
        return (f"no Stable Diffusion instance became free within {timeout:g}s "
                f"({len(self._instances)} instances, {len(self._line)} other jobs waiting); "
                "add instances to SD_ENDPOINTS or raise SD_ACQUIRE_TIMEOUT")

    def _down_message(self, now: float) -> str:
        causes = "; ".join(i.last_error for i in self._instances)
        retry = min(i.cooldown_until for i in self._instances) - now
        return (f"all {len(self._instances)} Stable Diffusion instances are down "
                f"(next retry in {retry:.0f}s): {causes}")
