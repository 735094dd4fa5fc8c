"""The instance pool: one job per instance, fair FIFO (retries first), failover, cooldown and recovery."""
from __future__ import annotations

import threading

import pytest

from agent.errors import (
    AllInstancesDown, JobContext, NoInstancesConfigured, PoolError, PoolTimeout, SDBadRequest, SDError,
    SDServerError,
)
from agent.pool import SDInstancePool, SDResult
from config import from_env
from simulators.png import read_png_header
from tests.helpers import Worker, small_payload, wait_until


def name_of(sim):
    return sim.url.removeprefix("http://")


def instance(pool, sim):
    return next(i for i in pool.snapshot()["instances"] if i["name"] == name_of(sim))


def hold(pool):
    """Acquire an instance from the calling thread; return (endpoint, release function)."""
    endpoint = pool.acquire(timeout=2)
    return endpoint, lambda: pool.release(endpoint)


def test_fifty_submitters_never_share_an_instance(sd_sims, sd_pools):
    sims = [sd_sims(latency=0.003) for _ in range(3)]
    pool = sd_pools([sim.url for sim in sims])
    start = threading.Barrier(50)
    workers = [Worker(lambda i=i: (start.wait(), pool.txt2img(small_payload(f"idea {i}")))[1]) for i in range(50)]
    for worker in workers:
        worker.start()
    results = [worker.outcome(timeout=30) for worker in workers]
    assert all(isinstance(r, SDResult) and r.images for r in results)
    assert read_png_header(results[0].images[0].data) == (16, 8)
    for sim in sims:
        assert sim.max_in_flight == 1 and sim.max_concurrency == 1
        jobs = sorted(sim.jobs, key=lambda job: job.arrived)
        assert jobs, "every instance is used"
        assert all(earlier.end <= later.arrived for earlier, later in zip(jobs, jobs[1:]))
    assert sum(len(sim.jobs) for sim in sims) == 50
    snapshot = pool.snapshot()
    assert snapshot["waiting"] == 0 and sum(i["jobs"] for i in snapshot["instances"]) == 50
    assert all(i["in_flight"] == 0 and i["failures"] == 0 for i in snapshot["instances"])


def test_waiters_are_served_in_arrival_order(sd_sims, sd_pools):
    sims = [sd_sims() for _ in range(3)]
    pool = sd_pools([sim.url for sim in sims])
    releases = [hold(pool)[1] for _ in sims]
    order, done = [], [threading.Event() for _ in range(6)]

    def wait_in_line(k):
        endpoint = pool.acquire()
        try:
            order.append(k)
            done[k].wait(5)
        finally:
            pool.release(endpoint)

    workers = []
    for k in range(6):
        workers.append(Worker(lambda k=k: wait_in_line(k)))
        workers[-1].start()
        wait_until(lambda: pool.snapshot()["waiting"] == k + 1, what=f"waiter {k} in line")
    for served, release in enumerate(releases, start=1):
        release()
        wait_until(lambda: len(order) == served, what="the next waiter")
    for served in range(3, 6):
        done[order[served - 3]].set()
        wait_until(lambda: len(order) == served + 1, what="the next waiter")
    for event in done:
        event.set()
    for worker in workers:
        worker.outcome()
    assert order == list(range(6))


def test_waiting_past_the_acquire_timeout_raises_pool_timeout(sd_sims, sd_pools):
    pool = sd_pools([sd_sims().url])
    _, release = hold(pool)
    with pytest.raises(PoolTimeout, match="within 0.05s.*SD_ENDPOINTS"):
        pool.acquire(timeout=0.05)
    release()
    assert pool.snapshot()["waiting"] == 0
    pool.release(pool.acquire(timeout=1))


def test_a_retry_is_served_before_earlier_waiters(sd_sims, sd_pools):
    pool = sd_pools([sd_sims().url])
    endpoint, release = hold(pool)
    order = []
    waiter = Worker(lambda: (pool.acquire(), order.append("waiter")))
    waiter.start()
    wait_until(lambda: pool.snapshot()["waiting"] == 1, what="a waiter")
    retry = Worker(lambda: (pool.acquire(retry=True), order.append("retry")))
    retry.start()
    wait_until(lambda: pool.snapshot()["waiting"] == 2, what="the retry in line")
    release()
    retry.outcome()
    assert order == ["retry"]
    pool.release(endpoint)
    waiter.outcome()
    assert order == ["retry", "waiter"]
    pool.release(endpoint)


def test_releasing_an_instance_twice_is_refused(sd_sims, sd_pools):
    pool = sd_pools([sd_sims().url])
    endpoint, release = hold(pool)
    release()
    with pytest.raises(ValueError, match="not leased"):
        pool.release(endpoint)
    assert pool.snapshot()["leases"] == 1


def test_refused_instance_is_skipped_and_the_job_finishes_elsewhere(sd_sims, sd_pools):
    dead, alive = sd_sims(), sd_sims()
    dead.refuse()
    pool = sd_pools([dead.url, alive.url])
    result = pool.txt2img(small_payload())
    assert (result.attempts, result.instance) == (2, name_of(alive))
    assert len(result.errors) == 1 and name_of(dead) in result.errors[0] and "refused" in result.errors[0]
    state = instance(pool, dead)
    assert (state["state"], state["healthy"], state["failures"], state["cooldowns"]) == ("cooldown", False, 1, 1)


def test_hanging_instance_hits_the_read_timeout_and_the_job_moves(sd_sims, sd_pools):
    stuck, alive = sd_sims(), sd_sims()
    stuck.hang()
    pool = sd_pools([stuck.url, alive.url], read_timeout=0.3)
    result = pool.txt2img(small_payload())
    assert (result.attempts, result.instance) == (2, name_of(alive))
    assert "no answer within 0.3s" in result.errors[0]


def test_server_errors_fail_over_and_bad_requests_do_not(sd_sims, sd_pools):
    broken, alive = sd_sims(), sd_sims()
    broken.fail()
    pool = sd_pools([broken.url, alive.url])
    assert pool.txt2img(small_payload()).instance == name_of(alive)
    with pytest.raises(SDBadRequest):
        pool.txt2img(small_payload(width=0))
    assert instance(pool, alive)["healthy"] and instance(pool, alive)["failures"] == 0


def test_every_instance_down_raises_all_instances_down_not_a_wait(sd_sims, sd_pools):
    sims = [sd_sims(), sd_sims()]
    for sim in sims:
        sim.refuse()
    pool = sd_pools([sim.url for sim in sims], acquire_timeout=10)
    with pytest.raises(AllInstancesDown) as down:
        pool.txt2img(small_payload())
    assert all(name_of(sim) in str(down.value) for sim in sims)
    with pytest.raises(AllInstancesDown):
        pool.txt2img(small_payload())


def test_a_failed_job_error_carries_the_instances_it_tried(sd_sims, sd_pools):
    first, second = sd_sims(), sd_sims()
    first.fail()
    second.refuse()
    pool = sd_pools([first.url, second.url])
    with pytest.raises(AllInstancesDown) as down:
        pool.txt2img(small_payload())
    job = down.value.job
    assert (job.instance, job.attempts) == (name_of(second), 2)
    assert "HTTP 500" in job.errors[0] and "refused" in job.errors[1]
    assert isinstance(down.value.__cause__, SDError) and down.value.status is None


def test_the_last_instance_failure_is_raised_with_the_job_context(sd_sims, sd_pools):
    broken, alive = sd_sims(), sd_sims()
    broken.fail()
    pool = sd_pools([broken.url, alive.url], max_attempts=1)
    with pytest.raises(SDServerError) as failed:
        pool.txt2img(small_payload())
    assert failed.value.status == 500 and failed.value.job == JobContext(name_of(broken), (str(failed.value),))
    with pytest.raises(SDBadRequest) as rejected:  # our payload's fault: not retried, instance not blamed
        pool.txt2img(small_payload(width=0))
    assert rejected.value.job.instance == name_of(alive) and rejected.value.job.attempts == 1
    assert instance(pool, alive)["failures"] == 0


def test_waiters_wake_when_the_last_healthy_instance_fails(sd_sims, sd_pools):
    dead, alive = sd_sims(), sd_sims()
    dead.refuse()
    pool = sd_pools([dead.url, alive.url], acquire_timeout=10)
    assert pool.txt2img(small_payload()).attempts == 2
    waiter = Worker(lambda: pool.txt2img(small_payload()))
    endpoint = pool.acquire(timeout=2)
    waiter.start()
    wait_until(lambda: pool.snapshot()["waiting"] == 1, what="a waiter")
    pool.release(endpoint, f"SD instance {endpoint.name}: connection reset")
    with pytest.raises(AllInstancesDown, match="connection reset"):
        waiter.outcome()
    assert instance(pool, alive)["state"] == "cooldown"


def test_revived_instance_is_probed_and_used_again(sd_sims, sd_pools):
    flaky, alive = sd_sims(), sd_sims()
    flaky.refuse()
    pool = sd_pools([flaky.url, alive.url], cooldown=0.05)
    assert pool.txt2img(small_payload()).attempts == 2
    flaky.revive()
    wait_until(lambda: pool.txt2img(small_payload()).instance == name_of(flaky), what="the revived instance")
    assert flaky.pings >= 1
    state = instance(pool, flaky)
    # On a loaded machine a probe may run (and fail) before revive(): a second cooldown, no failure.
    assert (state["healthy"], state["failures"], state["jobs"]) == (True, 1, 1) and state["cooldowns"] >= 1


def test_probe_due_brings_an_instance_back_without_any_job(sd_sims, sd_pools):
    only = sd_sims()
    only.refuse()
    pool = sd_pools([only.url], cooldown=0.02)
    with pytest.raises(AllInstancesDown):
        pool.txt2img(small_payload())
    only.revive()
    jobs_before = len(only.jobs)

    def healthy_again():
        pool.probe_due()
        return instance(pool, only)["healthy"]

    wait_until(healthy_again, what="the probe to restore the instance")
    assert only.pings >= 1 and len(only.jobs) == jobs_before


def test_failed_probe_restarts_the_cooldown(sd_sims, sd_pools):
    dead, alive = sd_sims(), sd_sims()
    dead.refuse()
    pool = sd_pools([dead.url, alive.url], cooldown=0.02)
    pool.txt2img(small_payload())

    def probed_again():
        assert pool.txt2img(small_payload()).instance == name_of(alive)
        return instance(pool, dead)["cooldowns"] >= 2

    wait_until(probed_again, what="a second cooldown")
    state = instance(pool, dead)
    assert state["failures"] == 1 and "probe failed" in state["last_error"]


def test_counters_and_snapshot(sd_sims, sd_pools):
    sims = [sd_sims(latency=0.002) for _ in range(2)]
    pool = sd_pools([sim.endpoint for sim in sims])
    for i in range(4):
        result = pool.txt2img(small_payload(f"job {i}"))
        assert result.latency > 0 and result.queue_wait >= 0 and result.info["prompt"] == f"job {i}"
    snapshot = pool.snapshot()
    assert [i["jobs"] for i in snapshot["instances"]] == [2, 2]
    assert all(i["busy_seconds"] > 0 and i["state"] == "idle" for i in snapshot["instances"])
    assert snapshot["leases"] == 4 and snapshot["waiting"] == 0 and snapshot["total_queue_wait"] >= 0


def test_credentials_stay_out_of_results_and_snapshot(sd_sims, sd_pools):
    sim = sd_sims(auth=("alice", "pw-7731"))
    pool = sd_pools([sim.endpoint])
    result = pool.txt2img(small_payload())
    assert result.instance == name_of(sim)
    assert "pw-7731" not in repr(pool.snapshot()) and "pw-7731" not in repr(result.errors)


def test_empty_config_raises_no_instances_configured():
    pool = SDInstancePool.from_config(from_env({}))
    with pytest.raises(NoInstancesConfigured, match="SD_ENDPOINTS") as caught:
        pool.txt2img(small_payload())
    assert caught.value.job == JobContext()  # no instance was ever leased


def test_from_config_reads_the_settings(sd_sims):
    sims = [sd_sims(), sd_sims()]
    pool = SDInstancePool.from_config(from_env({"SD_ENDPOINTS": ",".join(s.url for s in sims + sims),
                                                "SD_COOLDOWN": "0.5", "SD_MAX_ATTEMPTS": "2"}))
    try:
        assert len(pool.snapshot()["instances"]) == 2  # the duplicate entries are used once
        assert pool.txt2img(small_payload()).images
    finally:
        pool.close()


def test_close_wakes_waiters_with_pool_error(sd_sims, sd_pools):
    pool = sd_pools([sd_sims().url])
    _, release = hold(pool)
    waiter = Worker(lambda: pool.txt2img(small_payload()))
    waiter.start()
    wait_until(lambda: pool.snapshot()["waiting"] == 1, what="a waiter")
    pool.close()
    with pytest.raises(PoolError, match="closed"):
        waiter.outcome()
    release()
