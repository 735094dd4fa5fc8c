"""The production server against greedy and slow clients, at full size (marker `load`: python -m pytest -m load).

Each test starts `gunicorn -c gunicorn.conf.py app:app` with its defaults (64 threads, a
1.5 GB body budget, 512 MB saves, a 10 s read timeout) on the session's store, and checks
what the issue asked for: 20 parallel largest saves never take the worker past the budget,
500 slow connections leave the threads to everyone else, and a bystander is answered
throughout. `python -m bench.hostile_bench` reports the same scenarios' figures.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bench import proc_stats
from bench.hostile_clients import Bystander, LargestSave, SlowClients, send_save
from config import from_env
from core.embedded_store import free_port
from tests.helpers import wait_until
from tests.production_server import Gunicorn, pings, production_env

pytestmark = pytest.mark.load

DEFAULTS = from_env({})
BYSTANDER_LATENCY = 5.0  # seconds: "still answers within a few seconds"


@pytest.fixture
def server(mongo_uri, tmp_path) -> Iterator[Gunicorn]:
    """Start the production server with its defaults on the session's store."""
    port = free_port()
    server = Gunicorn(production_env(HOST="127.0.0.1", PORT=str(port), MONGO_URI=mongo_uri,
                                     MONGO_DB=f"hostile_{uuid.uuid4().hex[:12]}", DATA_DIR=str(tmp_path)))
    server.port = port
    try:
        wait_until(lambda: pings(f"http://127.0.0.1:{port}"), 60, "gunicorn to answer")
        yield server
        server.process.terminate()
        server.process.wait(150)
    finally:
        server.close()
    assert "Traceback" not in "".join(server.lines), "".join(server.lines)


def check_bystander(bystander: Bystander) -> None:
    """Check the bystander was answered every time, and soon."""
    assert bystander.failures == [] and bystander.latencies
    assert max(bystander.latencies) < BYSTANDER_LATENCY, sorted(bystander.latencies)[-5:]


def test_twenty_largest_saves_stay_within_the_body_budget(server):
    port, budget = server.port, DEFAULTS["BODY_MEMORY_BUDGET"]
    save = LargestSave(DEFAULTS["SAVE_MAX_CONTENT_LENGTH"])
    names = [f"saver-{i:04d}" for i in range(20)]
    for name in names:
        requests.post(f"http://127.0.0.1:{port}/paint/start", json={"username": name}, timeout=30).raise_for_status()
    sampler = proc_stats.Sampler({"worker": server.worker()}, interval=0.05).start()
    bystander = Bystander(port)
    bystander.start()
    try:
        with ThreadPoolExecutor(len(names)) as pool:
            deadline = time.monotonic() + 1200
            outcomes = list(pool.map(lambda name: send_save(port, save, name, deadline), names))
    finally:
        bystander.stop()
        peak_kb = sampler.stop()["worker"].peak_rss_kb
    assert [o.status for o in outcomes] == [200] * len(names), [(o.status, o.message) for o in outcomes]
    assert sum(o.busy for o in outcomes) > 0  # the budget held all but one back at a time
    assert peak_kb * 1024 <= budget, f"worker peaked at {peak_kb // 1024} MB"
    check_bystander(bystander)


def test_five_hundred_slow_connections_leave_the_threads_to_others(server):
    slow = SlowClients(server.port, 500)
    slow.start()
    wait_until(lambda: slow.opened >= 500, 60, "500 slow connections")
    bystander = Bystander(server.port)
    bystander.start()
    try:
        wait_until(lambda: slow.cut >= 500, 120, "every slow connection cut off once")
    finally:
        bystander.stop()
        slow.stop()
    check_bystander(bystander)
    assert len(bystander.latencies) > 20
