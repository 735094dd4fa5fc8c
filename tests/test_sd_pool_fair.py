"""The pool's line serves owners in turn, and an ImageControl hears and cancels its generation's images."""
from __future__ import annotations

import base64
import threading
import time

import pytest
import requests

from agent.errors import SDCancelled, TooManyQueued
from agent.pool import ImageControl
from simulators.png import read_png_header
from tests.helpers import Worker, small_payload, wait_until


def name_of(sim):
    return sim.url.removeprefix("http://")


def instance(pool, sim):
    return next(i for i in pool.snapshot()["instances"] if i["name"] == name_of(sim))


class Heard:
    """An on_event handler that keeps what it hears, in order."""

    def __init__(self):
        self.events = []
        self._lock = threading.Lock()

    def __call__(self, kind, data):
        with self._lock:
            self.events.append((kind, data))

    def of(self, kind):
        with self._lock:
            return [data for seen, data in self.events if seen == kind]

    def kinds(self):
        with self._lock:
            return [kind for kind, _ in self.events]


def submit(pool, control, prompt, **fields):
    """Start txt2img of `prompt` for `control` on a thread and wait until it stands in line."""
    waiting = pool.snapshot()["waiting"]
    worker = Worker(lambda: pool.txt2img(small_payload(prompt, **fields), control=control))
    worker.start()
    wait_until(lambda: pool.snapshot()["waiting"] == waiting + 1, what=f"{prompt} in line")
    return worker


def block(pool, sim, prompt="blocker"):
    """Hold `sim` on a job of an owner of its own, started before anything queues; return its worker."""
    sim.hang()
    worker = Worker(lambda: pool.txt2img(small_payload(prompt), control=ImageControl("blocker")))
    worker.start()
    wait_until(lambda: sim.max_in_flight == 1, what="the blocker to start")
    return worker


def served(sim):
    return [job.prompt for job in sim.jobs]


@pytest.mark.parametrize(("order", "expected"), [
    ("fair", ["blocker", "a0", "b0", "c0", "a1", "a2", "a3", "a4", "a5"]),
    ("fifo", ["blocker", "a0", "a1", "a2", "a3", "a4", "a5", "b0", "c0"]),
])
def test_owners_take_turns_and_fifo_keeps_arrival_order(sd_sims, sd_pools, order, expected):
    sim = sd_sims()
    pool = sd_pools([sim.url], order=order)
    blocker = block(pool, sim)
    heard = {owner: Heard() for owner in "abc"}
    controls = {owner: ImageControl(owner, on_event=heard[owner]) for owner in "abc"}
    workers = [submit(pool, controls["a"], f"a{i}") for i in range(6)]
    workers += [submit(pool, controls[owner], f"{owner}0") for owner in "bc"]
    positions = {owner: pool.queue_position(control) for owner, control in controls.items()}
    assert positions == ({"a": 1, "b": 2, "c": 3} if order == "fair" else {"a": 1, "b": 7, "c": 8})
    assert [data["position"] for data in heard["a"].of("queued")] == [1, 2, 3, 4, 5, 6]
    sim.release()
    for worker in [blocker, *workers]:
        assert worker.outcome().images
    assert served(sim) == expected
    assert sim.max_concurrency == sim.max_in_flight == 1
    assert all(pool.queue_position(control) is None for control in controls.values())
    assert heard["b"].kinds() == ["queued", "started", "finished"]
    assert heard["b"].of("finished") == [{"instance": name_of(sim), "ok": True}]


def test_within_an_owner_the_generation_begun_first_goes_first(sd_sims, sd_pools):
    sim = sd_sims()
    pool = sd_pools([sim.url])
    blocker = block(pool, sim)
    first, second = ImageControl("a"), ImageControl("a")  # two generations of one participant
    workers = [submit(pool, second, "second 0"), submit(pool, first, "first 0"),
               submit(pool, second, "second 1"), submit(pool, first, "first 1")]
    assert (pool.queue_position(first), pool.queue_position(second)) == (1, 3)
    sim.release()
    for worker in [blocker, *workers]:
        worker.outcome()
    assert served(sim) == ["blocker", "first 0", "first 1", "second 0", "second 1"]


def test_a_retry_goes_first_within_its_owner_and_its_owner_next(sd_sims, sd_pools):
    dying, other = sd_sims(per_step=0.05), sd_sims()
    pool = sd_pools([other.url, dying.url])  # the blocker takes the first idle instance
    blocker = block(pool, other)
    a = ImageControl("a")
    retried = Worker(lambda: pool.txt2img(small_payload("a retried", steps=100), control=a))
    retried.start()
    wait_until(lambda: dying.max_in_flight == 1, what="the job on the instance about to die")
    workers = [submit(pool, ImageControl("b"), "b0"), submit(pool, ImageControl("c"), "c0"),
               submit(pool, a, "a later")]
    dying.die_after(0)  # the job gets no answer and fails over
    wait_until(lambda: pool.snapshot()["waiting"] == 4, what="the retry in line")
    assert pool.queue_position(a) == 1
    other.release()
    result = retried.outcome()
    assert (result.attempts, result.instance) == (2, name_of(other))
    for worker in [blocker, *workers]:
        worker.outcome()
    assert served(other) == ["blocker", "a retried", "b0", "c0", "a later"]
    assert other.max_in_flight == 1 and dying.max_in_flight == 1


def test_cancel_takes_waiting_images_out_of_line_and_leaves_the_others(sd_sims, sd_pools):
    sim = sd_sims()
    pool = sd_pools([sim.url])
    blocker = block(pool, sim)
    a, b = ImageControl("a"), ImageControl("b")
    cancelled = [submit(pool, a, "a0"), submit(pool, a, "a1")]
    kept = submit(pool, b, "b0")
    assert pool.queue_position(b) == 2
    a.cancel()
    a.cancel()  # again: nothing more happens
    for worker in cancelled:
        with pytest.raises(SDCancelled, match="waited"):
            worker.outcome(timeout=1)
    assert a.cancelled and not b.cancelled
    assert pool.snapshot()["waiting"] == 1 and pool.queue_position(a) is None and pool.queue_position(b) == 1
    with pytest.raises(SDCancelled):  # after cancel, at once: the instance never hears of it
        pool.txt2img(small_payload("a2"), control=a)
    sim.release()
    assert blocker.outcome().images and kept.outcome().images
    assert served(sim) == ["blocker", "b0"] and sim.interrupts == []


def test_cancel_interrupts_exactly_the_instance_running_the_image(sd_sims, sd_pools):
    sims = [sd_sims(per_step=0.05) for _ in range(3)]
    pool = sd_pools([sim.url for sim in sims])
    heard = Heard()
    a, others = ImageControl("a", on_event=heard), [ImageControl("b"), ImageControl("c")]
    running = [Worker(lambda c=c: pool.txt2img(small_payload(c.owner, steps=10), control=c)) for c in others]
    doomed = Worker(lambda: pool.txt2img(small_payload("a", steps=40), control=a))
    for worker in [*running, doomed]:
        worker.start()
    (started,) = wait_until(lambda: heard.of("started"), what="a's image to start")
    target = next(sim for sim in sims if name_of(sim) == started["instance"])
    wait_until(lambda: requests.get(target.url + "/sdapi/v1/progress", timeout=2).json()["state"]["sampling_step"],
               what="a's image to sample")
    before = time.monotonic()
    a.cancel()
    assert len(target.interrupts) == 1  # sent before cancel() returns
    with pytest.raises(SDCancelled, match="drew the image") as caught:
        doomed.outcome()
    assert time.monotonic() - before < 1.0  # not the 2 s its 40 steps would take
    assert caught.value.job.instance == name_of(target)
    for worker in running:
        result = worker.outcome()
        assert result.images and result.instance != name_of(target)
    assert [sim.interrupts for sim in sims if sim is not target] == [[], []]
    assert target.jobs[0].interrupted and not any(job.interrupted for sim in sims if sim is not target
                                                  for job in sim.jobs)
    state = instance(pool, target)
    assert (state["state"], state["failures"], state["cooldowns"]) == ("idle", 0, 0)
    assert heard.of("finished") == [{"instance": name_of(target), "ok": False}]
    assert pool.txt2img(small_payload("after"), control=ImageControl("d")).images  # the pool still serves


def watched(sd_sims, sd_pools, *, preview):
    """Run one 30-step image watched every 0.05 s; return what its control heard and the simulator."""
    sim = sd_sims(per_step=0.02)
    requests.post(sim.url + "/sdapi/v1/options", json={"show_progress_every_n_steps": 1}, timeout=5)
    pool = sd_pools([sim.url], progress_every=0.05)
    heard = Heard()
    assert pool.txt2img(small_payload(width=64, height=32, steps=30),
                        control=ImageControl("a", on_event=heard, preview=preview)).images
    return heard, sim


def test_progress_rises_while_the_image_runs_and_stops_with_it(sd_sims, sd_pools):
    heard, sim = watched(sd_sims, sd_pools, preview=False)
    kinds = heard.kinds()
    assert kinds[0] == "started" and kinds[-1] == "finished" and set(kinds[1:-1]) == {"progress"}
    seen = heard.of("progress")
    assert len(seen) >= 3
    assert all(p["instance"] == name_of(sim) and p["steps"] == 30 and p["preview"] is None for p in seen)
    fractions = [p["progress"] for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] > fractions[0] > 0
    assert [p["step"] for p in seen] == sorted(p["step"] for p in seen)
    polls = sim.progress_polls
    time.sleep(0.2)
    assert sim.progress_polls == polls  # no poll once the image is done


def test_preview_comes_only_when_asked_for(sd_sims, sd_pools):
    heard, _ = watched(sd_sims, sd_pools, preview=True)
    previews = [p["preview"] for p in heard.of("progress") if p["preview"]]
    assert previews and read_png_header(base64.b64decode(previews[-1])) == (8, 4)  # latent size of 64x32


def test_a_failing_event_handler_or_progress_poll_does_not_fail_the_image(sd_sims, sd_pools):
    sim = sd_sims(per_step=0.02)
    pool = sd_pools([sim.url], progress_every=0.01, probe_timeout=0.001)

    def broken(kind, data):
        raise RuntimeError("a listener's bug")

    assert pool.txt2img(small_payload(steps=10), control=ImageControl("a", on_event=broken)).images


def test_more_waiting_images_than_the_cap_raise_too_many_queued(sd_sims, sd_pools):
    sim = sd_sims()
    pool = sd_pools([sim.url], max_queued_per_owner=2)
    blocker = block(pool, sim)
    a = ImageControl("a")
    waiting = [submit(pool, a, "a0"), submit(pool, ImageControl("a"), "a1")]  # the cap counts the owner
    with pytest.raises(TooManyQueued, match="SD_MAX_QUEUED_PER_PARTICIPANT"):
        pool.txt2img(small_payload("a2"), control=a)
    waiting.append(submit(pool, ImageControl("b"), "b0"))  # another owner still gets in line
    assert pool.snapshot()["waiting"] == 3
    sim.release()
    for worker in [blocker, *waiting]:
        worker.outcome()
