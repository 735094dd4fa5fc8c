"""SIGKILL one of four gunicorn workers sharing the SD pool through Redis, in the middle of a burst of generations.

Marker `crash` (`python -m pytest -m crash`; `.ci/run` runs it). `gunicorn -w 4` with
REDIS_URL (the session's redis-server, on keys of this test's own), SHARED_TTL 3 s and
JOB_HEARTBEAT 1 s, on the session's embedded store, with a chat simulator and WebUI
simulators whose images take longer than the lease's ttl. A burst of /generate requests,
each on a connection of its own, four on each worker (which worker accepted which
connection is read from /proc: the sockets in its fd table), fills every instance; as soon
as it does, a worker drawing images (and with images waiting in line, if one has) is
killed with SIGKILL.

Then:
- no WebUI instance ever had more than one txt2img request open: the killed worker's
  images went on being drawn for nobody until its leases expired; the reaper interrupted
  each and waited for it to end before the instance went to anyone else;
- the killed worker's leases are back (its instances idle, or leased to another job)
  within SHARED_TTL + a beat of the kill, and only its leases were reaped;
- its clients saw their connection closed without an answer, at once, and the records of
  their generations, left running, are answered and stored as failed once their heartbeat
  is three beats old; every other request succeeded;
- every request has exactly one record, in the state its answer said.
gunicorn's master starts a new worker in place of the killed one.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from pymongo import MongoClient

from agent.sd import SDEndpoint
from apps.records import COLLECTION
from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator
from tests.helpers import SIM_KEY, TASK, wait_until
from tests.production_server import serving

pytestmark = pytest.mark.crash

WORKERS = 4
INSTANCES = 6
PER_WORKER = 4  # requests of the burst on each worker, one image each: 16, about three rounds of the instances
SD_LATENCY = 6.0  # seconds an image: an orphan still runs when its lease is reaped
TTL = 3.0  # SHARED_TTL: a lease lasts this long past its process's last beat (every TTL / 3)
HEARTBEAT = 1.0  # JOB_HEARTBEAT: a record is stale three beats after its process's last mark
BACK_WITHIN = TTL + 2.0  # the ttl, a beat of another process to reap it, and the reap itself


@dataclass
class Request:
    """One POST /generate of the burst, on a connection of its own that a known worker accepted, and how it ended."""

    username: str
    connection: http.client.HTTPConnection
    worker: int
    ended: float = 0.0
    status: int | None = None
    answer: dict[str, Any] | None = None
    error: BaseException | None = None

    def run(self, go: threading.Event) -> None:
        body = json.dumps({"appid": 0, "type": 0, "prompts": {"task": TASK, "num": 1}, "username": self.username})
        try:
            go.wait()
            self.connection.request("POST", "/generate", body, {"Content-Type": "application/json"})
            response = self.connection.getresponse()
            self.status, self.answer = response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as error:
            self.error = error
        finally:
            self.ended = time.monotonic()
            self.connection.close()

    @property
    def succeeded(self) -> bool:
        return self.status == 200 and bool(self.answer and self.answer.get("success"))


@dataclass
class LeaseWatch:
    """Poll the pool's instance hashes in Redis on a thread, keeping each state change with its time."""

    client: redis.Redis
    keys: dict[str, str]  # instance name -> its hash
    changes: dict[str, list[tuple[float, dict[str, str]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LeaseWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            pipe = self.client.pipeline(transaction=False)
            for key in self.keys.values():
                pipe.hgetall(key)
            states = pipe.execute()
            now = time.monotonic()  # after the answer: a change is never timed before it was seen
            for name, seen in zip(self.keys, states):
                kept = {k: seen.get(k, "") for k in ("state", "holder", "last_error")}
                history = self.changes.setdefault(name, [])
                if not history or history[-1][1] != kept:
                    history.append((now, kept))

    def at(self, name: str, moment: float) -> dict[str, str]:
        """Return the state of `name` last seen at or before `moment`."""
        return [kept for when, kept in self.changes[name] if when <= moment][-1]

    def back(self, name: str, since: float) -> tuple[float, float] | None:
        """Return when `name` was reaped after `since` and when it was back (idle, or leased anew), or None.

        A reap sets the instance probing with why in `last_error`; the probe may end between two
        polls, and then the reap is first seen with the instance already back.
        """
        holder = self.at(name, since)["holder"]
        reaped = None
        for when, kept in self.changes[name]:
            if when <= since or "lease expired" not in kept["last_error"]:
                continue
            if kept["state"] == "probing":
                reaped = reaped or when
            elif kept["state"] == "idle" or (kept["state"] == "busy" and kept["holder"] not in ("", holder)):
                return reaped or when, when
        return None


def _ended_job(port: int, job_id: Any) -> dict[str, Any]:
    """Return GET /jobs/<id>'s data once the job is no longer queued or running (a stale record reads failed)."""
    def ended() -> dict[str, Any] | None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", f"/jobs/{job_id}")
            data = json.loads(connection.getresponse().read())["data"]
        finally:
            connection.close()
        return data if data["status"] not in ("queued", "running") else None

    return wait_until(ended, 10 * HEARTBEAT, f"job {job_id} to be answered as ended", every=0.2)


def test_killing_one_of_four_workers_loses_nothing_and_stacks_no_job(redis_url, mongo_uri, tmp_path):
    prefix = f"faults-{uuid.uuid4().hex[:8]}:"
    database = f"faults_{uuid.uuid4().hex[:8]}"
    with ExitStack() as closing:
        keys = redis.Redis.from_url(redis_url, decode_responses=True)
        closing.callback(keys.close)
        store = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
        closing.callback(store.close)
        chat = closing.enter_context(ChatSimulator(api_key=SIM_KEY, latency=0.1))
        sds = []
        for _ in range(INSTANCES):
            sds.append(SDWebUISimulator(latency=SD_LATENCY).start())
            closing.callback(sds[-1].stop)
        by_port = {sd.port: sd for sd in sds}
        names = {SDEndpoint.parse(sd.endpoint).name: sd for sd in sds}
        names_of = {sd.port: name for name, sd in names.items()}
        settings = dict(
            WEB_CONCURRENCY=str(WORKERS), REDIS_URL=redis_url, REDIS_PREFIX=prefix, SHARED_TTL=str(TTL),
            JOB_HEARTBEAT=str(HEARTBEAT), MONGO_URI=mongo_uri, MONGO_DB=database, LOG_LEVEL="WARNING",
            AZURE_OPENAI_ENDPOINT=chat.url, AZURE_OPENAI_API_KEY=SIM_KEY,
            SD_ENDPOINTS=",".join(sd.endpoint for sd in sds), SD_CONNECT_TIMEOUT="2", SD_READ_TIMEOUT="30",
            SD_PROBE_TIMEOUT="2", SD_ACQUIRE_TIMEOUT="60")
        server = closing.enter_context(serving(["-w", str(WORKERS)], **settings))
        closing.callback(lambda: (tmp_path / "gunicorn.log").write_text(server.output()))  # before it stops
        # Every worker built its app: core.shared marks each process alive in Redis.
        wait_until(lambda: len(server.workers()) == WORKERS and len(keys.keys(prefix + "process:*")) == WORKERS,
                   120, "four workers to be up", every=0.1)
        workers = server.workers()
        watch = LeaseWatch(keys, {name: f"{prefix}sd:instance:{name}" for name in names}).start()
        closing.callback(watch.stop)
        burst = [Request(f"fault-{i}", connection, pid)
                 for i, (connection, pid) in enumerate(server.connections_to_each(workers, PER_WORKER))]
        go = threading.Event()
        threads = [threading.Thread(target=r.run, args=(go,), daemon=True) for r in burst]
        for thread in threads:
            thread.start()
        go.set()

        # As soon as every instance draws, kill a worker drawing images, one with images waiting too if
        # there is one (so its leases and its tickets in line are both left behind), the most images first.
        def drawing() -> dict[int, int] | None:
            images = server.connections_of(workers, set(by_port))[1]
            return images if len(images) == INSTANCES else None

        images = wait_until(drawing, 60, "every instance to draw an image")
        drawn = {pid: sum(1 for p in images.values() if p == pid) for pid in workers}
        victim = max(workers, key=lambda pid: (drawn[pid] > 0, drawn[pid] < PER_WORKER, drawn[pid]))
        orphans = [by_port[port] for port, pid in images.items() if pid == victim]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        for thread in threads:
            thread.join(90)
        assert not any(thread.is_alive() for thread in threads), "a request of the burst hangs"
        spread = {pid: sum(1 for r in burst if r.worker == pid) for pid in workers}
        # Wait (a while past the bound, so the assertions below say by how much) for its leases.
        deadline = killed + BACK_WITHIN + 10
        while time.monotonic() < deadline and any(watch.back(names_of[sd.port], killed) is None for sd in orphans):
            time.sleep(0.1)
        # The master starts a worker in the killed one's place.
        wait_until(lambda: len(server.workers()) == WORKERS and victim not in server.workers(), 60,
                   "gunicorn to replace the killed worker", every=0.1)
        watch.stop()
        leases = {sd.port: watch.back(name, killed) for name, sd in names.items()}
        (tmp_path / "leases.json").write_text(json.dumps({name: [(round(t - killed, 3), kept) for t, kept in seen]
                                                          for name, seen in watch.changes.items()}, indent=1))

        # The killed worker's records were left running; they are answered and stored as failed once stale.
        left = {doc["username"]: doc for doc in store[database][COLLECTION].find({})}
        answered = {r.username: _ended_job(server.port, left[r.username]["_id"])
                    for r in burst if not r.succeeded and r.username in left}
        stored = list(store[database][COLLECTION].find({}))

    dead_ones = [r for r in burst if r.worker == victim]
    lost = [r for r in burst if not r.succeeded]
    back = {port: None if got is None else tuple(round(t - killed, 2) for t in got) for port, got in leases.items()}
    report = (f"requests per worker {spread}; killed {victim}, serving {len(dead_ones)} of them, drawing "
              f"{len(orphans)} images (the others waited in line); its leases (reaped, back) in s after the kill "
              f"{back}; orphans interrupted "
              f"{[[job.interrupted for job in sd.jobs if job.start <= killed][-1:] for sd in orphans]}; "
              f"max open jobs per instance {[sd.max_in_flight for sd in sds]}; "
              f"failed {len(lost)}, succeeded {len(burst) - len(lost)}; the server's log: {tmp_path / 'gunicorn.log'}")
    print(report)
    # The kill hit a worker that was drawing images.
    assert dead_ones and orphans, report
    # One open job per instance at any time, before and after the kill.
    assert all(sd.max_in_flight == 1 and sd.max_concurrency == 1 for sd in sds), report
    # The killed worker's leases were reaped and came back within the ttl and a beat; no live one was reaped.
    for sd in orphans:
        assert leases[sd.port] is not None, (sd.port, f"its states: {tmp_path / 'leases.json'}", report)
        assert leases[sd.port][1] - killed <= BACK_WITHIN, report
    assert all(leases[sd.port] is None for sd in sds if sd not in orphans), report
    # Each orphaned image still drawing when its lease was reaped was interrupted, and had ended before the
    # instance's next job began.
    for sd in orphans:
        orphan = [job for job in sd.jobs if job.start <= killed][-1]
        if leases[sd.port][0] < orphan.start + SD_LATENCY - 0.5:
            assert orphan.interrupted, (sd.port, orphan, report)
        assert all(job.start >= orphan.end for job in sd.jobs if job.start > killed), (sd.port, report)
    # Its clients saw the connection closed without an answer, at once; everyone else got their image.
    assert lost, report
    for request in burst:
        if request.worker == victim and not request.succeeded:
            assert isinstance(request.error, ConnectionError), (request, report)
            assert request.ended - killed < 2.0, (request, report)
        else:
            assert request.succeeded, (request, report)
            assert len(request.answer["data"]["result"]) == 1, request.answer
    # Every request has exactly one record, in the state its answer said; the lost ones' were left running,
    # and are failed (Interrupted) for whoever reads them.
    assert sorted(doc["username"] for doc in stored) == sorted(r.username for r in burst), report
    final = {doc["username"]: doc for doc in stored}
    for request in burst:
        doc = final[request.username]
        if request.succeeded:
            assert doc["status"] == "succeeded", (request.username, doc["status"])
        else:
            assert left[request.username]["status"] in ("queued", "running"), left[request.username]["status"]
            assert answered[request.username]["status"] == "failed", answered[request.username]
            assert doc["status"] == "failed" and doc["error"]["kind"] == "Interrupted", doc.get("error")
