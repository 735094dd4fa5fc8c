"""Prometheus collectors that read the SD pool and the GPT client at scrape time.

Both backends keep their own counters under their own locks; these collectors only turn
a `snapshot()` (no network, no credentials) into metric families, so a scrape costs two
dictionary copies and never touches a model.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.gpt import GPTClient
from agent.pool import SDInstancePool

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
        """Yield the pool's series as they are right now."""
        snap = self.pool.snapshot()
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
