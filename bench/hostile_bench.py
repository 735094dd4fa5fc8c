"""Greedy and slow clients against the production server: memory under the largest saves, answers under slowloris.

Starts `gunicorn -c gunicorn.conf.py app:app` with its defaults (one worker, 64 threads, a
1.5 GB BODY_MEMORY_BUDGET, 512 MB saves, a 10 s REQUEST_READ_TIMEOUT; MONGO_URI unset, so the
embedded store under a temporary DATA_DIR). The clients run in this process (bench.hostile_clients):

1. largest saves: `--saves` participants each send a save of SAVE_MAX_CONTENT_LENGTH at once
   (Expect: 100-continue), again after Retry-After until it is stored, while a bystander calls
   /ping and /paint/start. Reported: the worker's resident memory at the start and its peak
   (VmHWM after a reset, and VmRSS polled), the answers 503, the time until all are stored.
2. slow clients: `--slow` connections send a byte every 2 s (half of them heads, half bodies,
   each reopened when cut off) for `--duration` s while a bystander calls; against this
   server and against the same with gunicorn's own gthread worker (`-k gthread`).

    python -m bench.hostile_bench [--saves 20] [--slow 500] [--duration 30]
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench import proc_stats
from bench.hostile_clients import Bystander, LargestSave, SlowClients, send_save
from config import from_env
from core.embedded_store import free_port
from tests.helpers import wait_until
from tests.production_server import Gunicorn, pings, production_env

MB = 1024 * 1024
DEFAULTS = from_env({})
BYSTANDER_TIMEOUT = 10.0  # seconds a bystander's call may take before it counts as unanswered


def start(data_dir: Path, args: tuple[str, ...] = ()) -> tuple[Gunicorn, int]:
    """Start the production server (with gunicorn options `args`) and return it and its port."""
    port = free_port()
    server = Gunicorn(production_env(HOST="127.0.0.1", PORT=str(port), DATA_DIR=str(data_dir)), args)
    wait_until(lambda: pings(f"http://127.0.0.1:{port}"), 120, "gunicorn to answer")
    return server, port


def stop(server: Gunicorn) -> None:
    """Stop the server gracefully (the worker stops its store)."""
    server.process.terminate()
    server.process.wait(150)
    server.close()


def percentile(values: list[float], p: float) -> float:
    """Return the nearest-rank `p`th percentile of `values` (nan when there are none)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else math.nan


def bystander_cells(bystander: Bystander) -> str:
    """Return the table cells of a bystander's calls: answered, unanswered, p50, max."""
    lat = bystander.latencies
    return (f"{len(lat)} | {len(bystander.failures)} | {percentile(lat, 50):.3f} | "
            f"{max(lat, default=math.nan):.3f}")


def largest_saves(count: int, data_dir: Path) -> str:
    """Run the largest-saves scenario; return its table row."""
    save = LargestSave(DEFAULTS["SAVE_MAX_CONTENT_LENGTH"])
    server, port = start(data_dir)
    try:
        names = [f"saver-{i:04d}" for i in range(count)]
        for name in names:
            requests.post(f"http://127.0.0.1:{port}/paint/start", json={"username": name}, timeout=30)
        worker = server.worker()
        start_kb = proc_stats.memory_kb(worker)[0]
        sampler = proc_stats.Sampler({"worker": worker}, interval=0.05).start()
        bystander = Bystander(port, timeout=BYSTANDER_TIMEOUT)
        bystander.start()
        began = time.monotonic()
        try:
            with ThreadPoolExecutor(count) as pool:
                outcomes = list(pool.map(lambda n: send_save(port, save, n, began + 1800), names))
        finally:
            wall = time.monotonic() - began
            bystander.stop()
            peak_kb = sampler.stop()["worker"].peak_rss_kb
    finally:
        stop(server)
    stored = sum(o.status == 200 for o in outcomes)
    return (f"| {count} x {save.size / MB:.0f} MB | {DEFAULTS['BODY_MEMORY_BUDGET'] / MB:.0f} | "
            f"{start_kb / 1024:.0f} | {peak_kb / 1024:.0f} | {stored}/{count} | {sum(o.busy for o in outcomes)} | "
            f"{wall:.0f} | {bystander_cells(bystander)} |")


def slow_clients(count: int, duration: float, data_dir: Path, worker_args: tuple[str, ...], label: str) -> str:
    """Run the slow-clients scenario on a server started with `worker_args`; return its table row."""
    server, port = start(data_dir, worker_args)
    try:
        slow = SlowClients(port, count)
        slow.start()
        wait_until(lambda: slow.opened >= count, 60, f"{count} slow connections")
        bystander = Bystander(port, timeout=BYSTANDER_TIMEOUT)
        bystander.start()
        time.sleep(duration)
        bystander.stop()
        slow.stop()
    finally:
        stop(server)
    return f"| {label} | {count} | {duration:.0f} | {bystander_cells(bystander)} | {slow.cut} |"


def main(argv: list[str] | None = None) -> None:
    """Run both scenarios and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=20)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as tmp:
        saves = largest_saves(args.saves, Path(tmp) / "saves")
        slow = [slow_clients(args.slow, args.duration, Path(tmp) / "slow", (), "core.worker"),
                slow_clients(args.slow, args.duration, Path(tmp) / "stock", ("-k", "gthread"), "gthread (stock)")]
    print(f"\n`python -m bench.hostile_bench --saves {args.saves} --slow {args.slow} --duration {args.duration:g}` "
          f"({os.cpu_count()} cores)\n")
    print("| saves at once | budget (MB) | worker RSS at start (MB) | worker peak (MB) | stored | answers 503 "
          "| until all stored (s) | bystander answered | unanswered | p50 (s) | max (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(saves)
    print(f"\nBystander calls unanswered within {BYSTANDER_TIMEOUT:g} s count as unanswered.\n")
    print("| worker | slow connections | seconds | bystander answered | unanswered | p50 (s) | max (s) "
          "| slow connections cut off |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(slow))


if __name__ == "__main__":
    main()
