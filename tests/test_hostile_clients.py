"""The production server against greedy and slow clients, at full size (marker `load`: python -m pytest -m load).

Each test starts `gunicorn -c gunicorn.conf.py app:app` with its default settings on the
session's store and checks that 20 parallel saves of SAVE_MAX_CONTENT_LENGTH never take the
worker past BODY_MEMORY_BUDGET, that 500 slow connections leave the threads to everyone else,
and that a bystander is answered throughout. `python -m bench.hostile_bench` reports the same
scenarios' figures.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from bench.hostile_clients import Bystander, largest_saves, slow_clients
from config import from_env
from tests.production_server import Gunicorn, serving

pytestmark = pytest.mark.load

DEFAULTS = from_env({})
BYSTANDER_LATENCY = 5.0  # seconds: "still answers within a few seconds"


@pytest.fixture
def server(mongo_uri, tmp_path) -> Iterator[Gunicorn]:
    """Run the production server with its defaults on the session's store."""
    with serving(MONGO_URI=mongo_uri, MONGO_DB=f"hostile_{uuid.uuid4().hex[:12]}", DATA_DIR=str(tmp_path)) as server:
        yield server
    assert "Traceback" not in server.output(), server.output()


def check_bystander(bystander: Bystander) -> None:
    """Check the bystander was answered every time, and soon."""
    assert bystander.failures == [] and bystander.latencies
    assert max(bystander.latencies) < BYSTANDER_LATENCY, sorted(bystander.latencies)[-5:]


def test_twenty_largest_saves_stay_within_the_body_budget(server):
    run = largest_saves(server, 20, DEFAULTS["SAVE_MAX_CONTENT_LENGTH"], limit=1200)
    assert [o.status for o in run.outcomes] == [200] * 20, [(o.status, o.message) for o in run.outcomes]
    assert sum(o.busy for o in run.outcomes) > 0  # the budget held all but one back at a time
    assert run.peak_kb * 1024 <= DEFAULTS["BODY_MEMORY_BUDGET"], f"worker peaked at {run.peak_kb // 1024} MB"
    check_bystander(run.bystander)


def test_five_hundred_slow_connections_leave_the_threads_to_others(server):
    slow, bystander = slow_clients(server.port, 500, 120, until=lambda slow: slow.cut >= 500)
    assert slow.cut >= 500  # every one cut off once: 408 after the read timeout
    check_bystander(bystander)
    assert len(bystander.latencies) > 20
