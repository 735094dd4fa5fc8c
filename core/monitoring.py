"""How operators see the server: a request id and a log line per request, Prometheus metrics, readiness.

**Requests.** Every request gets an id (the client's `X-Request-ID` when it is safe, else a
new one), sent back as `X-Request-ID`, and one access line (core.logs) when it is answered:
id, method, route pattern, status, duration and client address.

**Metrics.** Each app owns a CollectorRegistry (tests build many apps; the process-wide
default registry is never used). Requests are counted after every response, generations
when POST /generate ends, and the SD pool and GPT client are read at scrape time by two
collectors that only turn their `snapshot()` (no network, no credentials) into metric
families, as the body memory budget's reservations are by a gauge, so GET /metrics always
shows their state at that moment. Labels are bounded:
route patterns, never concrete paths; step names without their "[i]" index.

**Readiness** (GET /readyz) is cheap by design: one MongoDB ping with a short timeout, and
the snapshots the SD pool and the GPT client keep anyway; no model is called and no WebUI
is contacted. Ready means a generation can work: the database answers, GPT is configured,
and at least one Stable Diffusion instance is configured and healthy (SD_ENDPOINTS empty is
not ready, since every pipeline draws images). GPT failures never make it not ready (the
client cannot tell a broken key from a passing 429 storm); they are reported as "degraded".
The answer's data is a `Readiness`, a model per backend.
"""
from __future__ import annotations

import logging
import math
import re
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from flask import Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field

from agent.errors import DECLINED_KINDS
from agent.gpt import NOT_CONFIGURED, GPTClient
from agent.pool import BUSY, InstanceState, SDInstancePool
from core import logs
from core.backends import GPT, SD_POOL
from core.request_body import EXTENSION as BODY_MEMORY
from core.shared import EXTENSION as SHARED
from core.shared import SharedUnavailable

log = logging.getLogger(__name__)


# -- requests --------------------------------------------------------------------------------
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def request_id() -> str:
    """Return the current request's id."""
    return g.get("request_id", "-")


def _begin() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
    g.started = time.perf_counter()


def elapsed() -> float:
    """Return the seconds since the current request began."""
    return time.perf_counter() - g.get("started", time.perf_counter())


def route_label() -> str:
    """Return the route pattern of the current request (not its concrete path), for logs and metrics."""
    return request.url_rule.rule if request.url_rule else "<unmatched>"


def _finish(response: Response) -> Response:
    response.headers["X-Request-ID"] = request_id()
    logs.access(request_id=request_id(), method=request.method, route=route_label(), status=response.status_code,
                seconds=elapsed(), remote=request.remote_addr)
    return response


def _log_requests(app: Flask) -> None:
    """Give every request of `app` an id and write its access line when it ends."""
    app.before_request(_begin)
    app.after_request(_finish)


# -- metrics ---------------------------------------------------------------------------------
EXTENSION = "metrics"
# Requests range from a ping (milliseconds) to a generation with a dozen images (minutes).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_INDEX = re.compile(r"\[\d+\]")


class Metrics:
    """The registry of one app and the metrics its request handling updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("refinity_http_requests", "HTTP requests answered, by route pattern, "
                                "method and status", ["route", "method", "status"], registry=self.registry)
        self.request_seconds = Histogram("refinity_http_request_duration_seconds", "Time to answer a "
                                         "request, by route pattern", ["route"], buckets=BUCKETS,
                                         registry=self.registry)
        self.pipeline_seconds = Histogram("refinity_pipeline_duration_seconds", "Duration of POST "
                                          "/generate pipelines, by app id, type and outcome",
                                          ["appid", "type", "status"], buckets=BUCKETS, registry=self.registry)
        self.step_seconds = Histogram("refinity_step_duration_seconds", "Duration of pipeline steps "
                                      "(kind llm or image; step name without its index)", ["kind", "step"],
                                      buckets=BUCKETS, registry=self.registry)
        self.check_failures = Counter("refinity_answer_check_failures", "GPT answers that failed a check of "
                                      "their step, by step and check (count, length, label, ...)",
                                      ["step", "check"], registry=self.registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        method = method if method in _METHODS else "other"  # any token is a method to HTTP
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_generation(self, appid: Any, type_: Any, status: str, seconds: float,
                           entries: list[Any]) -> None:
        """Record one finished generation, the latency of each of its trace entries (apps.records) and the
        checks its GPT answers failed."""
        self.pipeline_seconds.labels(str(appid), str(type_), status).observe(seconds)
        for entry in entries:
            if entry.latency is not None:
                self.step_seconds.labels(entry.kind, step_label(entry.step)).observe(entry.latency)
            for failed in getattr(entry, "failed", ()):
                self.check_failures.labels(step_label(entry.step), failed.check).inc()

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)


def step_label(step: Any) -> str:
    """Return a step name fit for a label: `rapid.scene_images[2]` becomes `rapid.scene_images`."""
    return _INDEX.sub("", str(step)) if step else "unknown"


def _after(response: Response) -> Response:
    metrics: Metrics = current_app.extensions[EXTENSION]
    metrics.observe_request(route_label(), request.method, response.status_code,
                            elapsed())
    return response


def _count_requests(app: Flask) -> Metrics:
    """Give `app` its registry, count its requests and collect its backends at scrape time."""
    metrics = Metrics()
    metrics.registry.register(PoolCollector(app.extensions[SD_POOL]))
    metrics.registry.register(GPTCollector(app.extensions[GPT]))
    budget = app.extensions[BODY_MEMORY]
    Gauge("refinity_body_memory_reserved_bytes", "Bytes of BODY_MEMORY_BUDGET that request bodies hold now",
          registry=metrics.registry).set_function(lambda: budget.used)
    app.extensions[EXTENSION] = metrics
    app.after_request(_after)
    return metrics


def init_app(app: Flask) -> None:
    """Log, count and collect `app`: before any other hook, so even a refused request has an id."""
    _log_requests(app)
    _count_requests(app)


def get_metrics() -> Metrics:
    """Return the current app's metrics."""
    return current_app.extensions[EXTENSION]


def exposition() -> Response:
    """Return the current app's metrics as a response in the Prometheus text format."""
    return Response(get_metrics().render(), content_type=CONTENT_TYPE_LATEST)


@contextmanager
def generation_observed(recorder: Any) -> Iterator[None]:
    """Observe the generation run in the block (an apps.records.Recorder) when it ends, however."""
    started, status = time.monotonic(), "failed"
    try:
        yield
        status = "ok"
    finally:
        try:
            call = recorder.call
            get_metrics().observe_generation(call.appid, call.type, status, time.monotonic() - started,
                                             recorder.trace.entries)
        except Exception:  # metrics must never cost a participant a generation
            log.exception("could not observe generation metrics")


# Per-instance series: (snapshot key, metric name, help, is a counter).
_INSTANCE_SERIES = (
    ("jobs", "refinity_sd_instance_jobs", "Image jobs an instance completed", True),
    ("failures", "refinity_sd_instance_failures", "Image jobs that failed on an instance", True),
    ("cooldowns", "refinity_sd_instance_cooldowns", "Times an instance was set aside after a failure", True),
    ("busy_seconds", "refinity_sd_instance_busy_seconds", "Seconds an instance spent on jobs", True),
    ("healthy", "refinity_sd_instance_healthy", "1 unless the instance is cooling down after a failure", False),
    ("in_flight", "refinity_sd_instance_busy", "1 while the instance runs a job", False),
)

# Per-deployment series: (snapshot key, metric name, help, is a counter).
_DEPLOYMENT_SERIES = (
    ("calls", "refinity_gpt_calls", "GPT calls sent to a deployment", True),
    ("retries", "refinity_gpt_retries", "Retries the openai SDK made (429, 5xx, connection errors)", True),
    ("in_flight", "refinity_gpt_in_flight", "GPT calls running now", False),
    ("waiting", "refinity_gpt_waiting", "GPT calls waiting for a slot (GPT_MAX_CONCURRENCY)", False),
)


def _family(name: str, documentation: str, counter: bool, labels: list[str]) -> Metric:
    kind = CounterMetricFamily if counter else GaugeMetricFamily
    return kind(name, documentation, labels=labels)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class PoolCollector(Collector):
    """Pool-wide and per-instance series of an SDInstancePool."""

    def __init__(self, pool: SDInstancePool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        """Yield the pool's series as they are right now (none while Redis, which holds them, is unreachable)."""
        try:
            snap = self.pool.snapshot()
        except SharedUnavailable:
            return
        instances: list[dict[str, Any]] = snap["instances"]
        yield _gauge("refinity_sd_instances", "Stable Diffusion instances configured", len(instances))
        yield _gauge("refinity_sd_instances_healthy", "Instances not cooling down after a failure",
                     sum(1 for i in instances if i["healthy"]))
        yield _gauge("refinity_sd_instances_busy", "Instances running a job now",
                     sum(i["in_flight"] for i in instances))
        yield _gauge("refinity_sd_jobs_waiting", "Image jobs waiting for a free instance", snap["waiting"])
        yield CounterMetricFamily("refinity_sd_queue_wait_seconds", "Seconds image jobs spent waiting "
                                  "for a free instance, summed", value=snap["total_queue_wait"])
        for key, name, documentation, counter in _INSTANCE_SERIES:
            family = _family(name, documentation, counter, ["instance"])
            for instance in instances:
                family.add_metric([instance["name"]], float(instance[key]))
            yield family


class GPTCollector(Collector):
    """Per-deployment series of a GPTClient, failures by kind."""

    def __init__(self, gpt: GPTClient) -> None:
        self.gpt = gpt

    def collect(self) -> Iterator[Metric]:
        """Yield the client's series as they are right now."""
        snap = self.gpt.snapshot()
        configured = GaugeMetricFamily("refinity_gpt_configured", "1 when a GPT provider is configured",
                                       labels=["provider"])
        configured.add_metric([snap["provider"]], 1.0 if snap["configured"] else 0.0)
        yield configured
        deployments: dict[str, dict[str, Any]] = snap["deployments"]
        for key, name, documentation, counter in _DEPLOYMENT_SERIES:
            family = _family(name, documentation, counter, ["deployment"])
            for deployment, counters in deployments.items():
                family.add_metric([deployment], float(counters[key]))
            yield family
        failures = CounterMetricFamily("refinity_gpt_failures", "GPT calls that failed, by deployment "
                                       "and kind (timeout, rate_limited, auth, ...)", labels=["deployment", "kind"])
        for deployment, counters in deployments.items():
            for kind, count in counters["failures"].items():
                failures.add_metric([deployment, kind], float(count))
        yield failures


# -- readiness -------------------------------------------------------------------------------
DB_PING_TIMEOUT = 1.0  # seconds: a load balancer's probe must not hang on a dead database
RECENT_WINDOW = 300.0  # seconds of GPT failures reported as "recent"
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")  # user:pass@ in any URL


class RecentFailures:
    """GPT failures by kind over about the last `window` seconds, from cumulative totals.

    Each read keeps a sample of the totals (at most one per `every` seconds); the answer is
    the difference to the newest sample at least `window` old, or to the oldest one kept.
    """

    def __init__(self, window: float = RECENT_WINDOW, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.every, self.clock = window, every, clock
        self._samples: deque[tuple[float, dict[str, int]]] = deque([(clock(), {})])
        self._lock = threading.Lock()

    def update(self, totals: dict[str, int]) -> tuple[dict[str, int], float]:
        """Record `totals`; return the failures since the baseline sample and its age in seconds."""
        now = self.clock()
        with self._lock:
            if now - self._samples[-1][0] >= self.every:
                self._samples.append((now, dict(totals)))
            while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
                self._samples.popleft()
            since, base = self._samples[0]
        recent = {kind: n - base.get(kind, 0) for kind, n in totals.items() if n > base.get(kind, 0)}
        return recent, now - since


def _scrub(text: str) -> str:
    """Return `text` without URL credentials (error texts should hold none; make sure)."""
    return _CREDENTIALS.sub("", text or "")


class DatabaseStatus(BaseModel):
    """Whether MongoDB answers a ping within DB_PING_TIMEOUT; for the embedded store, also its restarts and disk."""

    reachable: bool
    supervised: bool | None = Field(None, description="Embedded store: this server looks after it (else another "
                                                       "process on the same data does).")
    restarts: int | None = Field(None, ge=0, description="Embedded store: times it died and was started again.")
    disk_free_mb: int | None = Field(None, ge=0, description="Embedded store: free space on DATA_DIR's disk.")
    disk_full: bool | None = Field(None, description="Embedded store: less than MIN_FREE_DISK_MB free.")


class InstanceStatus(BaseModel):
    """One Stable Diffusion instance as the pool sees it."""

    name: str = Field(description="The instance's URL without credentials.")
    state: InstanceState
    healthy: bool = Field(description="False while the instance cools down after a failure or is being probed.")
    cooldown_remaining: float = Field(ge=0, description="Seconds until a cooling instance is probed again.")
    last_error: str = Field(description="Its last failure, empty if none.")


class SDStatus(BaseModel):
    """The SD pool: how many instances are configured, healthy and busy, how many jobs wait, each instance."""

    total: int = Field(ge=0)
    healthy: int = Field(ge=0)
    busy: int = Field(ge=0)
    waiting: int = Field(ge=0)
    closed: bool = Field(description="The pool is shutting down.")
    instances: list[InstanceStatus]


class DeploymentProtocol(BaseModel):
    """How the steps ask one GPT deployment."""

    protocol: Literal["structured", "text"]
    fallback: str | None = Field(description="Why it fell back to the text protocol, if it did.")


class GPTStatus(BaseModel):
    """The GPT client: its provider and deployments, and its failures by kind, recent and in all."""

    configured: bool
    provider: str = Field(description="azure or openai; none when GPT is not configured.")
    chat_deployment: str
    vision_deployment: str
    structured: Literal["auto", "on", "off"] = Field(description="GPT_STRUCTURED: how steps ask GPT.")
    protocols: dict[str, DeploymentProtocol] = Field(description="Per deployment: how a step asks it, and "
                                                                 "after a fallback, why.")
    deployments: dict[str, dict[str, Any]] = Field(description="The client's counters per deployment, as "
                                                               "/metrics shows them.")
    recent_failures: dict[str, int] = Field(description="Failures by kind over the last `recent_seconds`.")
    recent_seconds: int = Field(ge=1)
    failures_total: dict[str, int] = Field(description="Failures by kind since the server started.")


class SharedStatus(BaseModel):
    """Where the deployment's processes share the SD pool, limits and job events, and whether it answers."""

    kind: Literal["process", "redis"] = Field(description="process: this process alone; redis: REDIS_URL.")
    reachable: bool


class Readiness(BaseModel):
    """GET /readyz: the state of each backend a generation needs."""

    database: DatabaseStatus
    shared: SharedStatus
    sd: SDStatus
    gpt: GPTStatus


def database_status(app: Flask) -> DatabaseStatus:
    """Ping MongoDB within a short timeout; for the embedded store, also its restarts and disk."""
    timeout = min(DB_PING_TIMEOUT, app.config["MONGO_TIMEOUT_MS"] / 1000)
    reachable = app.extensions["mongo"].ping(timeout=timeout)
    embedded = app.extensions.get("embedded_store")
    if embedded is None:
        return DatabaseStatus(reachable=reachable)
    free = shutil.disk_usage(embedded.data_dir).free
    return DatabaseStatus(reachable=reachable, supervised=embedded.supervising, restarts=embedded.restarts,
                          disk_free_mb=free // 2**20, disk_full=free < app.config["MIN_FREE_DISK_MB"] * 2**20)


def sd_status(app: Flask, shared: SharedStatus) -> SDStatus:
    """Summarise the SD pool: counts, and each instance's name, state and last error."""
    pool = app.extensions[SD_POOL]
    if not shared.reachable:  # the instances' states are there: unknown, none can be counted healthy
        return SDStatus(total=pool.size, healthy=0, busy=0, waiting=0, closed=False, instances=[])
    pool.probe_due()  # recover instances whose cooldown ended, even while no job asks for one
    snap = pool.snapshot()
    instances = [InstanceStatus(name=i["name"], state=i["state"], healthy=i["healthy"],
                                cooldown_remaining=i["cooldown_remaining"], last_error=_scrub(i["last_error"]))
                 for i in snap["instances"]]
    return SDStatus(total=len(instances), healthy=sum(1 for i in instances if i.healthy),
                    busy=sum(1 for i in instances if i.state == BUSY), waiting=snap["waiting"],
                    closed=snap["closed"], instances=instances)


def gpt_status(app: Flask) -> GPTStatus:
    """Summarise the GPT client: provider, deployments and their protocol, and failures by kind.

    Recent failures leave out the kinds a participant's input causes (the content filter, a
    refusal): they say nothing about the deployment's health.
    """
    gpt = app.extensions[GPT]
    snap = gpt.snapshot()
    totals: dict[str, int] = {}
    for counters in snap["deployments"].values():
        for kind, count in counters["failures"].items():
            totals[kind] = totals.get(kind, 0) + count
    window: RecentFailures = app.extensions.setdefault("readiness_gpt_failures", RecentFailures())
    recent, over = window.update({kind: n for kind, n in totals.items() if kind not in DECLINED_KINDS})
    return GPTStatus(configured=snap["configured"], provider=snap["provider"],
                     chat_deployment=gpt.chat_deployment, vision_deployment=gpt.vision_deployment,
                     structured=snap["structured"], protocols=snap["protocols"],
                     deployments=snap["deployments"], recent_failures=recent,
                     recent_seconds=max(1, math.ceil(over)), failures_total=totals)


def _problems(ready: Readiness) -> tuple[list[str], list[str]]:
    """Return what makes the server not ready, and what merely degrades it."""
    failing, degraded = [], []
    sd, gpt = ready.sd, ready.gpt
    if not ready.database.reachable:
        failing.append("database unreachable")
    if ready.database.disk_full:
        failing.append(f"the database's disk is full ({ready.database.disk_free_mb} MB free)")
    down = ", ".join(i.name for i in sd.instances if not i.healthy)
    if not ready.shared.reachable:
        failing.append("Redis (REDIS_URL) unreachable: the SD pool and the limits are shared there")
    elif sd.closed:
        failing.append("SD pool closed (shutting down)")
    elif sd.total == 0:
        failing.append("no SD instances configured (set SD_ENDPOINTS)")
    elif sd.healthy == 0:
        failing.append(f"0 of {sd.total} SD instances healthy (down: {down})")
    elif down:
        degraded.append(f"{sd.healthy} of {sd.total} SD instances healthy (down: {down})")
    if not gpt.configured:
        failing.append(f"GPT {NOT_CONFIGURED}")
    elif gpt.recent_failures:
        kinds = ", ".join(f"{kind}={n}" for kind, n in sorted(gpt.recent_failures.items()))
        degraded.append(f"GPT failures in the last {gpt.recent_seconds} s: {kinds}")
    return failing, degraded


def readiness(app: Flask) -> tuple[bool, Readiness, str]:
    """Return whether `app` is ready, the details of every backend, and a one-line message."""
    shared = app.extensions[SHARED]
    status = SharedStatus(kind=shared.kind, reachable=shared.reachable())
    data = Readiness(database=database_status(app), shared=status, sd=sd_status(app, status), gpt=gpt_status(app))
    failing, degraded = _problems(data)
    if failing:
        message = "not ready: " + "; ".join(failing + degraded)
    else:
        message = "ready" + ("; degraded: " + "; ".join(degraded) if degraded else "")
    return not failing, data, message
