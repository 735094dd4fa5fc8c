"""The shared state of a deployment (core.shared): its semaphores and token buckets, and Redis gone.

Every test that takes the `shared` fixture runs against both implementations, in this
process and in a real Redis. The Redis ones alone check what only several processes show:
two shared states on one prefix are two processes of one deployment, and a real child
process killed with SIGKILL leaves a slot that must come back by itself.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

import core.shared
from core.embedded_store import free_port
from core.envelope import CODE_BACKEND
from core.shared import _LocalBucket
from tests import redis_server
from tests.helpers import PROMPTS, ROOT, Worker, body

TTL = 2.0  # seconds what a process holds outlives it, in the tests of a killed process

# A process of the deployment that takes the one slot of "kill", says so and holds it until killed.
HOLDER = """
import sys, time
from core.shared import InRedis
shared = InRedis(sys.argv[1], prefix=sys.argv[2], ttl=float(sys.argv[3]))
shared.semaphore("kill", 1).acquire()
print("holding", flush=True)
time.sleep(120)
"""


# -- semaphores -----------------------------------------------------------------------------
def test_the_limit_holds_under_many_threads(shared):
    slots = shared.semaphore("many", 3)
    lock = threading.Lock()
    holders, peak, done = 0, 0, 0

    def work() -> None:
        nonlocal holders, peak, done
        for _ in range(5):
            with slots.holding():
                with lock:
                    holders += 1
                    peak = max(peak, holders)
                time.sleep(0.002)
                with lock:
                    holders -= 1
        with lock:
            done += 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert done == 12 and 1 <= peak <= 3 and holders == 0


def test_a_release_wakes_a_waiter(shared):
    slots = shared.semaphore("wake", 1)
    token = slots.acquire()
    waiter = Worker(lambda: (slots.acquire(timeout=30), time.monotonic()))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()  # it waits for the slot
    released = time.monotonic()
    slots.release(token)
    got, at = waiter.outcome(30)
    # Woken by the release: not at its 30 s timeout, nor when a Redis waiter would look again
    # anyway (when the holder's slot would expire, SHARED_TTL = 10 s after its last renewal).
    assert got is not None and at - released < 5


def test_a_wait_longer_than_a_commands_reply_timeout_is_still_a_wait(make_shared, shared_kind, monkeypatch):
    monkeypatch.setattr(core.shared, "REPLY_TIMEOUT", 0.3)  # a command may take 0.3 s; a wait, as long as it asks
    slots = make_shared(shared_kind).semaphore("long", 1)
    token = slots.acquire()
    threading.Timer(1.0, slots.release, args=(token,)).start()
    assert slots.acquire(timeout=10) is not None


def test_acquire_gives_up_after_its_timeout_when_every_slot_is_held(shared):
    slots = shared.semaphore("full", 2)
    held = [slots.acquire(), slots.acquire()]
    assert None not in held
    started = time.monotonic()
    assert slots.acquire(timeout=0.3) is None
    assert 0.2 <= time.monotonic() - started < 5
    assert slots.try_acquire() is None
    slots.release(held.pop())
    assert slots.try_acquire() is not None


def test_a_semaphore_is_one_object_per_name(shared):
    assert shared.semaphore("same", 2) is shared.semaphore("same", 2)
    assert shared.semaphore("same", 2) is not shared.semaphore("other", 2)


def test_two_processes_on_one_redis_share_one_limit(make_shared):
    first, second = (make_shared("redis").semaphore("two", 2) for _ in range(2))
    mine, theirs = first.acquire(), second.acquire()
    assert first.try_acquire() is None and second.try_acquire() is None
    waiter = Worker(lambda: first.acquire(timeout=30))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()
    released = time.monotonic()
    second.release(theirs)  # wakes the waiter of the other process
    assert waiter.outcome(30) is not None and time.monotonic() - released < 5
    first.release(mine)


def test_the_slot_of_a_killed_process_comes_back_within_the_ttl(make_shared):
    here = make_shared("redis", ttl=TTL)
    slots = here.semaphore("kill", 1)
    child = subprocess.Popen([sys.executable, "-c", HOLDER, here.url, here.prefix, str(TTL)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line == "holding\n", child.stderr.read() if child.poll() is not None else line
        assert slots.try_acquire() is None  # the child holds it, and renews it while it lives
        child.kill()
        child.wait(10)
        killed = time.monotonic()
        token = slots.acquire(timeout=10 * TTL)
        assert token is not None and time.monotonic() - killed < TTL + 1.5
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        child.stdout.close()
        child.stderr.close()


def test_a_live_process_keeps_its_slot_for_many_ttls(make_shared):
    holder, other = (make_shared("redis", ttl=TTL).semaphore("live", 1) for _ in range(2))
    token = holder.acquire()
    until = time.monotonic() + 3 * TTL
    while time.monotonic() < until:  # renewed on every beat, so it never expires
        assert other.try_acquire() is None
        time.sleep(0.25)
    holder.release(token)
    assert other.try_acquire() is not None


# -- token buckets --------------------------------------------------------------------------
def test_a_bucket_spends_its_capacity_then_says_how_long_to_wait(shared):
    buckets = shared.bucket("spend", 3)
    assert [buckets.take("alice") for _ in range(3)] == [0, 0, 0]
    wait = buckets.take("alice")
    assert 15 < wait <= 20  # 3 a minute: one token every 20 s, less what refilled meanwhile
    assert buckets.take("bob") == 0  # each key has its own budget


def test_a_bucket_refills_over_time(shared):
    buckets = shared.bucket("refill", 60)  # one token a second
    granted = 0
    while (wait := buckets.take("alice")) == 0:
        granted += 1
        assert granted <= 120, "the bucket never ran dry"
    assert granted >= 60 and 0 < wait <= 1
    time.sleep(wait + 0.2)
    assert buckets.take("alice") == 0


def test_the_refill_rule_to_the_second():
    now = [0.0]
    buckets = _LocalBucket(3, clock=lambda: now[0])  # the rule (Bucket._refill) on a clock the test moves
    assert [buckets.take("alice") for _ in range(3)] == [0, 0, 0]
    assert buckets.take("alice") == pytest.approx(20.0)
    now[0] += 10.0
    assert buckets.take("alice") == pytest.approx(10.0)  # half a token refilled, and not spent
    now[0] += 10.0
    assert buckets.take("alice") == 0


def test_two_processes_on_one_redis_share_one_budget(make_shared):
    first, second = (make_shared("redis").bucket("budget", 2) for _ in range(2))
    assert [first.take("alice"), second.take("alice")] == [0, 0]
    assert first.take("alice") > 0 and second.take("alice") > 0
    assert second.take("bob") == 0


# -- Redis gone -----------------------------------------------------------------------------
def test_while_redis_is_down_generations_fail_clearly_and_readyz_says_why(make_gen_app, tmp_path, redis_url):
    server = redis_server.RedisServer(tmp_path).start()  # one of its own, to stop
    try:
        client = make_gen_app(REDIS_URL=server.url).test_client()
        assert client.get("/readyz").status_code == 200
        assert client.post("/generate", json=body(0, PROMPTS[0])).status_code == 200
    finally:
        server.stop()
    response = client.post("/generate", json=body(0, PROMPTS[0]))
    answer = response.get_json()
    assert response.status_code == 503 and answer["success"] is False and answer["code"] == CODE_BACKEND
    assert answer["message"].startswith("rapid.products: Redis, which this deployment's processes share"), answer
    latest = client.get("/generations").get_json()["data"]["items"][0]
    assert latest["status"] == "failed" and latest["error"]["step"] == "rapid.products"
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["data"]["shared"] == {"kind": "redis", "reachable": False}
    assert "Redis (REDIS_URL) unreachable" in ready.get_json()["message"]
    assert client.get("/metrics").status_code == 200  # without the pool's series, which are in Redis


def test_a_server_started_while_redis_is_down_comes_up_not_ready(make_gen_app):
    client = make_gen_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0").test_client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["data"]["shared"]["reachable"] is False
