"""The load generator of bench.load_bench: a separate process of client threads on loopback.

Reads one job as JSON on stdin, runs it, and writes the results as JSON on stdout:
per route label the latency of every request, its errors (message -> count), when the
first request started and the last ended, plus this process's CPU seconds, so the
benchmark can show that the client was not the bottleneck. One thread per simulated
client, each with its own keep-alive connection, as a browser tab has.

Jobs: {"scenario": "save", "port", "clients", "duration", "seed"} and
{"scenario": "generate", "port", "clients", "rounds"}.
"""
from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from typing import Any

from bench.load_bodies import Participant, generation_body

TIMEOUT = 300.0  # seconds; a request slower than this is an error, not a hang


class Recorder:
    """Latencies and errors of every request, by route label, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, Counter] = defaultdict(Counter)
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def add(self, label: str, started: float, ended: float, error: str | None) -> None:
        """Record one finished request (an error counts as a request too)."""
        with self.lock:
            self.latencies[label].append(ended - started)
            self.first[label] = min(self.first.get(label, started), started)
            self.last[label] = max(self.last.get(label, ended), ended)
            if error:
                self.errors[label][error] += 1

    def flag(self, label: str, error: str) -> None:
        """Count an error found in an answer already recorded as a request."""
        with self.lock:
            self.errors[label][error] += 1

    def result(self) -> dict[str, Any]:
        """Return everything recorded, JSON-ready."""
        return {label: {"latencies": lat, "errors": dict(self.errors[label]),
                        "first": self.first[label], "last": self.last[label]}
                for label, lat in self.latencies.items()}


class Client:
    """One keep-alive HTTP connection to the server, reopened after a failure."""

    def __init__(self, port: int, recorder: Recorder) -> None:
        self.port, self.recorder = port, recorder
        self.conn: http.client.HTTPConnection | None = None

    def post(self, label: str, path: str, body: bytes) -> dict[str, Any] | None:
        """POST `body`, record the outcome under `label` and return the envelope when it succeeded."""
        started = time.monotonic()
        envelope, error = None, None
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
            self.conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = self.conn.getresponse()
            raw = response.read()
            envelope = json.loads(raw) if raw.startswith(b"{") else {"message": raw[:200].decode(errors="replace")}
            if response.status != 200 or not envelope.get("success"):
                error = f"HTTP {response.status}: {envelope.get('message')}"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.close()
        self.recorder.add(label, started, time.monotonic(), error)
        return None if error else envelope

    def close(self) -> None:
        """Close the connection."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def run_save(job: dict[str, Any], recorder: Recorder) -> tuple[float, float]:
    """Each client starts its session, then saves with one sketch redrawn until the time is up.

    Return this process's CPU seconds and the wall seconds of the loaded window (the check
    of every session that follows it is not counted).
    """
    clients = job["clients"]
    limit = job["duration"] + 2 * TIMEOUT  # a broken client thread must not hang the others
    deadline: list[float] = []
    # The clock starts when every client is ready (the barrier's action runs before it opens).
    go = threading.Barrier(clients + 1, action=lambda: deadline.append(time.monotonic() + job["duration"]),
                           timeout=limit)
    saved = threading.Barrier(clients + 1, timeout=limit)

    def participant(i: int) -> None:
        me = Participant(f"load-{job['seed']}-{i}", job["seed"] * 100_000 + i)
        body = me.next_save()  # prepared before the start, so the first save is not late
        client = Client(job["port"], recorder)
        go.wait()
        client.post("/paint/start", "/paint/start", me.start_body())
        acknowledged = None
        while time.monotonic() < deadline[0]:
            if client.post("/paint/save", "/paint/save", body) is not None:
                acknowledged = list(me.fragments)
            body = me.next_save()
        # Idle at the barrier for longer than gunicorn's keep-alive, the connection would be
        # closed under us; a browser would open a new one, and so does the check.
        client.close()
        saved.wait()  # the check below must not overlap anyone's saves
        loaded = client.post("/paint/start (check)", "/paint/start", me.start_body())
        schemes = ((loaded or {}).get("data") or {}).get("rapidDivergenceSchemes")
        if loaded and acknowledged and schemes != [json.loads(f) for f in acknowledged]:
            recorder.flag("/paint/start (check)", "loaded sketches differ from the last saved ones")
        client.close()

    threads = [threading.Thread(target=participant, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    go.wait()
    cpu, wall = _cpu(), time.monotonic()
    saved.wait()
    cpu, wall = _cpu() - cpu, time.monotonic() - wall
    for thread in threads:
        thread.join()
    return cpu, wall


def _check_generation(envelope: dict[str, Any], creatives: int) -> str | None:
    result = (envelope.get("data") or {}).get("result") or []
    if len(result) != creatives:
        return f"answer has {len(result)} creatives, expected {creatives}"
    return None


def run_generate(job: dict[str, Any], recorder: Recorder) -> tuple[float, float]:
    """Each client sends `rounds` generations back to back; return CPU and wall seconds from the start."""
    clients = job["clients"]
    go = threading.Barrier(clients + 1, timeout=TIMEOUT)

    def generator(i: int) -> None:
        bodies = [generation_body(i, r) for r in range(job["rounds"])]
        client = Client(job["port"], recorder)
        go.wait()
        for body, creatives in bodies:
            label = f"/generate type {body['type']}"
            envelope = client.post(label, "/generate", json.dumps(body, ensure_ascii=False).encode())
            problem = envelope and _check_generation(envelope, creatives)
            if problem:
                recorder.flag(label, problem)
        client.close()

    threads = [threading.Thread(target=generator, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    go.wait()
    cpu, wall = _cpu(), time.monotonic()
    for thread in threads:
        thread.join()
    return _cpu() - cpu, time.monotonic() - wall


def main() -> None:
    """Run the job read from stdin and print its results as JSON."""
    job = json.load(sys.stdin)
    recorder = Recorder()
    cpu, wall = {"save": run_save, "generate": run_generate}[job["scenario"]](job, recorder)
    json.dump({"routes": recorder.result(), "cpu": cpu, "wall": wall}, sys.stdout)


if __name__ == "__main__":
    main()
