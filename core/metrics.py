"""Prometheus metrics of one app: requests, generations, steps, and the backends' own counters.

Each app owns a CollectorRegistry (tests build many apps; the process-wide default registry
is never used). Requests are counted after every response, generations when POST /generate
ends, and the SD pool and GPT client are read at scrape time (core.backend_metrics), so
GET /metrics always shows their state at that moment. Labels are bounded: route patterns,
never concrete paths; step names without their "[i]" index.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from core import request_log
from core.backend_metrics import GPTCollector, PoolCollector
from core.backends import GPT, SD_POOL

log = logging.getLogger(__name__)

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

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        method = method if method in _METHODS else "other"  # any token is a method to HTTP
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_generation(self, appid: Any, type_: Any, status: str, seconds: float,
                           entries: list[Any]) -> None:
        """Record one finished generation and the latency of each of its trace entries (apps.records)."""
        self.pipeline_seconds.labels(str(appid), str(type_), status).observe(seconds)
        for entry in entries:
            if entry.latency is not None:
                self.step_seconds.labels(entry.kind, step_label(entry.step)).observe(entry.latency)

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)


def step_label(step: Any) -> str:
    """Return a step name fit for a label: `rapid.scene_images[2]` becomes `rapid.scene_images`."""
    return _INDEX.sub("", str(step)) if step else "unknown"


def _after(response: Response) -> Response:
    metrics: Metrics = current_app.extensions[EXTENSION]
    metrics.observe_request(request_log.route_label(), request.method, response.status_code,
                            request_log.elapsed())
    return response


def init_app(app: Flask) -> Metrics:
    """Give `app` its registry, count its requests and collect its backends at scrape time."""
    metrics = Metrics()
    metrics.registry.register(PoolCollector(app.extensions[SD_POOL]))
    metrics.registry.register(GPTCollector(app.extensions[GPT]))
    app.extensions[EXTENSION] = metrics
    app.after_request(_after)
    return metrics


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
