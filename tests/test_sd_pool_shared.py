"""Several processes on one Redis board: one job per instance, one line, leases that outlive no process.

Each pool here is one process of a deployment (pools built on one `InRedis` state, or a real
child process); the rest of the pool's suite runs on both boards through `sd_pools`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager

import pytest
import redis

from agent.errors import SDError
from agent.pool import ImageControl
from core import shared as shared_state
from tests.helpers import Worker, small_payload, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TTL = 2.0  # seconds a killed process's lease outlives it, in these tests


def states(client, prefix, sims):
    """Return each simulator's instance state as the Redis board holds it."""
    return [client.hget(f"{prefix}sd:instance:{sim.url.removeprefix('http://')}", "state") for sim in sims]


@contextmanager
def another_process(redis_url, prefix, sim, prompt):
    """Run a process of the deployment that asks `sim` for one image; kill it after the block if it lives."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from agent.pool import SDInstancePool, ImageControl
        from core.shared import InRedis
        pool = SDInstancePool([{sim.endpoint!r}], connect_timeout=1, read_timeout=60, acquire_timeout=60,
                              cooldown=30, max_attempts=1, probe_timeout=1,
                              shared=InRedis({redis_url!r}, prefix={prefix!r}, ttl={TTL}))
        pool.txt2img({{"prompt": {prompt!r}, "steps": 2, "width": 64, "height": 64}}, ImageControl("gone"))
        """)], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


@pytest.fixture
def deployment(make_shared, sd_pools, shared_kind):
    """Return a factory of `n` pools that are `n` processes of one deployment on the Redis board."""
    if shared_kind != "redis":
        pytest.skip("several processes share a pool only on the Redis board")
    prefix = f"dep-{os.urandom(6).hex()}:"

    def make(endpoints, n, ttl=10.0, **settings):
        return [sd_pools(endpoints, shared=make_shared("redis", prefix=prefix, ttl=ttl), **settings)
                for _ in range(n)], prefix

    return make


def test_processes_share_one_job_per_instance_and_every_instance_works(deployment, sd_sims):
    sims = [sd_sims(latency=0.2) for _ in range(3)]
    pools, _ = deployment([sim.endpoint for sim in sims], 4, acquire_timeout=30.0)
    workers = [Worker(lambda i=i: pools[i % 4].txt2img(small_payload(f"idea {i}"), ImageControl(f"p{i % 5}")))
               for i in range(30)]
    for worker in workers:
        worker.start()
    results = [worker.outcome(timeout=30) for worker in workers]
    assert len(results) == 30
    assert [sim.max_in_flight for sim in sims] == [1, 1, 1]
    assert sorted(len(sim.jobs) for sim in sims) == [10, 10, 10]  # each busy all along: least recently used first
    snapshot = pools[0].snapshot()
    assert snapshot["leases"] == 30 and snapshot["waiting"] == 0
    assert [i["jobs"] for i in snapshot["instances"]] == [10, 10, 10]  # the deployment's counters, seen by any


def test_the_line_is_fair_across_processes(deployment, sd_sims):
    sim = sd_sims()
    (first, second), _ = deployment([sim.endpoint], 2, acquire_timeout=30.0)
    sim.hang()
    blocker = Worker(lambda: first.txt2img(small_payload("blocker"), ImageControl("blocker")))
    blocker.start()
    wait_until(lambda: sim.max_in_flight == 1, what="the blocker to start")
    flood = ImageControl("flood")
    workers = []
    for i in range(4):  # one participant's images, asked of the first process
        workers.append(Worker(lambda i=i: first.txt2img(small_payload(f"flood {i}"), flood)))
        workers[-1].start()
        wait_until(lambda: first.snapshot()["waiting"] == i + 1, what=f"flood {i} in line")
    late = ImageControl("late")
    workers.append(Worker(lambda: second.txt2img(small_payload("late 0"), late)))
    workers[-1].start()
    wait_until(lambda: second.snapshot()["waiting"] == 5, what="the late image in line")
    assert second.queue_position(late) == 2  # after one of the flood's, not after all four
    assert first.queue_position(flood) == 1
    sim.release()
    for worker in [blocker, *workers]:
        worker.outcome(timeout=30)
    order = [job.prompt for job in sim.jobs]
    assert order[:3] == ["blocker", "flood 0", "late 0"], order


def test_a_killed_process_lease_comes_back_and_its_image_is_interrupted_first(deployment, sd_sims, redis_url):
    sim = sd_sims(latency=30.0)  # the dead process's image would hold the instance for 30 s
    (pool,), prefix = deployment([sim.endpoint], 1, ttl=TTL, acquire_timeout=30.0)
    with another_process(redis_url, prefix, sim, "orphan") as child:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        wait_until(lambda: sim.max_in_flight == 1, what="the child's image to start")
        assert states(client, prefix, [sim]) == ["busy"]
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        killed = time.monotonic()
        result = Worker(lambda: pool.txt2img(small_payload("after"), ImageControl("alive")))
        result.start()
        sim.latency = 0.0
        outcome = result.outcome(timeout=20)
        back = time.monotonic() - killed
    assert outcome.instance == sim.url.removeprefix("http://")
    assert back < TTL + TTL / 3 + 3.0, back  # the ttl, a beat to reap it, and the probe
    assert len(sim.interrupts) == 1  # the orphan was stopped before anyone got the instance
    assert sim.max_in_flight == 1  # never the orphan and the next job at once
    assert [job.prompt for job in sim.jobs] == ["orphan", "after"]
    assert sim.jobs[0].interrupted


def test_a_waiter_of_a_killed_process_is_skipped(deployment, sd_sims, redis_url):
    sim = sd_sims()
    (pool,), prefix = deployment([sim.endpoint], 1, ttl=TTL, acquire_timeout=30.0)
    sim.hang()
    blocker = Worker(lambda: pool.txt2img(small_payload("blocker"), ImageControl("blocker")))
    blocker.start()
    wait_until(lambda: sim.max_in_flight == 1, what="the blocker to start")
    with another_process(redis_url, prefix, sim, "never") as child:
        wait_until(lambda: pool.snapshot()["waiting"] == 1, what="the child's image in line")
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        after = Worker(lambda: pool.txt2img(small_payload("after"), ImageControl("alive")))
        after.start()
        wait_until(lambda: pool.snapshot()["waiting"] == 2, what="the next image in line")
        time.sleep(TTL + 0.5)  # past the child's liveness: it is dead to the board now
        sim.release()
        blocker.outcome(timeout=10)
        after.outcome(timeout=10)
    assert [job.prompt for job in sim.jobs] == ["blocker", "after"]
    assert not sim.interrupts  # the instance went straight to the live waiter: no lease of the dead one to reap
    assert pool.snapshot()["waiting"] == 0


def test_one_probe_per_instance_for_the_whole_deployment(deployment, sd_sims):
    sim = sd_sims()
    pools, _ = deployment([sim.endpoint], 3, cooldown=1.0, max_attempts=1)
    name = sim.url.removeprefix("http://")
    sim.fail(1)
    with pytest.raises(SDError):
        pools[0].txt2img(small_payload("first"), ImageControl("a"))
    assert [i["state"] for i in pools[1].snapshot()["instances"]] == ["cooldown"]  # every process sees it
    pings = sim.pings
    time.sleep(1.2)  # the cooldown is over: every process now looks
    for pool in pools:
        pool.probe_due()
    wait_until(lambda: [i["state"] for i in pools[2].snapshot()["instances"]] == ["idle"], what="the instance back")
    for pool in pools:
        pool.probe_due()
    assert sim.pings - pings == 1
    assert pools[2].txt2img(small_payload("second"), ImageControl("b")).instance == name


def test_a_job_whose_lease_was_reaped_is_drawn_again_not_returned_half_done(deployment, sd_sims, redis_url):
    sims = [sd_sims(latency=1.0) for _ in range(2)]
    (pool,), prefix = deployment([sim.endpoint for sim in sims], 1, acquire_timeout=30.0)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    job = Worker(lambda: pool.txt2img(small_payload("reaped"), ImageControl("a")))
    job.start()
    drawing = wait_until(lambda: [sim for sim in sims if sim.max_in_flight == 1], what="the image to start")[0]
    # What the reaper of another process does to a lease it found expired (here, with nobody to interrupt it).
    client.hset(f"{prefix}sd:instance:{drawing.url.removeprefix('http://')}",
                mapping={"state": "probing", "holder": "", "until": 2**50})
    result = job.outcome(timeout=20)
    retried = next(sim for sim in sims if sim is not drawing)
    assert result.instance == retried.url.removeprefix("http://") and result.attempts == 2
    assert "lease" in result.errors[0]


def test_a_process_taken_for_dead_while_it_waited_stands_in_line_again(deployment, sd_sims, redis_url):
    sim = sd_sims()
    (pool,), prefix = deployment([sim.endpoint], 1, acquire_timeout=30.0)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    sim.hang()
    blocker = Worker(lambda: pool.txt2img(small_payload("blocker"), ImageControl("blocker")))
    blocker.start()
    wait_until(lambda: sim.max_in_flight == 1, what="the blocker to start")
    waiter = Worker(lambda: pool.txt2img(small_payload("waiter"), ImageControl("a")))
    waiter.start()
    wait_until(lambda: pool.snapshot()["waiting"] == 1, what="the image in line")
    client.delete(*client.keys(f"{prefix}process:*"))  # its beats missed for the ttl, as in a long stall
    started = time.monotonic()
    sim.release()
    blocker.outcome(timeout=10)
    assert waiter.outcome(timeout=10).instance == sim.url.removeprefix("http://")
    assert time.monotonic() - started < 5.0  # at its turn, not after SD_ACQUIRE_TIMEOUT
    assert [job.prompt for job in sim.jobs] == ["blocker", "waiter"]


def test_a_wait_longer_than_a_commands_reply_timeout_is_still_a_wait(deployment, sd_sims, monkeypatch):
    monkeypatch.setattr(shared_state, "REPLY_TIMEOUT", 0.3)  # a command may take 0.3 s; a wait, as long as it asks
    sim = sd_sims(latency=1.0)
    (pool,), _ = deployment([sim.endpoint], 1, acquire_timeout=30.0)
    first = Worker(lambda: pool.txt2img(small_payload("first"), ImageControl("a")))
    first.start()
    wait_until(lambda: sim.max_in_flight == 1, what="the first image to start")
    assert pool.txt2img(small_payload("second"), ImageControl("b")).queue_wait > 0.3
    first.outcome(timeout=10)
