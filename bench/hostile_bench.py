"""Greedy and slow clients against the production server: memory under the largest saves, answers under slowloris.

Starts `gunicorn -c gunicorn.conf.py app:app` with its default settings (MONGO_URI unset, so the
embedded store under a temporary DATA_DIR); the clients run in this process (bench.hostile_clients):

1. largest saves: `--saves` participants each send a save of SAVE_MAX_CONTENT_LENGTH at once
   (Expect: 100-continue), again after Retry-After until it is stored, while a bystander calls
   /ping and /paint/start. Reported: the worker's resident memory at the start and its peak
   (VmHWM after a reset, and VmRSS polled), the answers 503, the time until all are stored.
2. slow clients: `--slow` connections send a byte every 2 s (half of them heads, half bodies,
   each reopened when cut off) while a bystander calls for `--duration` s; against this server
   and against the same with gunicorn's own gthread worker (`-k gthread`).

    python -m bench.hostile_bench [--saves 20] [--slow 500] [--duration 30]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.hostile_clients import Bystander, largest_saves, slow_clients
from bench.load_bench import percentile
from config import from_env
from tests.production_server import serving

MB = 1024 * 1024
DEFAULTS = from_env({})
BYSTANDER_TIMEOUT = 10.0  # seconds a bystander's call may take before it counts as unanswered


def bystander_cells(bystander: Bystander) -> str:
    """Return the table cells of a bystander's calls: answered, unanswered, p50 and max latency."""
    lat = bystander.latencies
    spread = f"{percentile(lat, 50):.3f} | {max(lat):.3f}" if lat else "- | -"
    return f"{len(lat)} | {len(bystander.failures)} | {spread}"


def saves_row(count: int, data_dir: Path) -> str:
    """Run the largest-saves scenario; return its table row."""
    size = DEFAULTS["SAVE_MAX_CONTENT_LENGTH"]
    with serving(DATA_DIR=str(data_dir)) as server:
        run = largest_saves(server, count, size, limit=1800, bystander_timeout=BYSTANDER_TIMEOUT)
    stored = sum(o.status == 200 for o in run.outcomes)
    return (f"| {count} x {size / MB:.0f} MB | {DEFAULTS['BODY_MEMORY_BUDGET'] / MB:.0f} | "
            f"{run.start_kb / 1024:.0f} | {run.peak_kb / 1024:.0f} | {stored}/{count} | "
            f"{sum(o.busy for o in run.outcomes)} | {run.seconds:.0f} | {bystander_cells(run.bystander)} |")


def slow_row(count: int, duration: float, data_dir: Path, worker_args: tuple[str, ...], label: str) -> str:
    """Run the slow-clients scenario for `duration` s on a server started with `worker_args`; return its row."""
    with serving(worker_args, DATA_DIR=str(data_dir)) as server:
        slow, bystander = slow_clients(server.port, count, duration, bystander_timeout=BYSTANDER_TIMEOUT)
    return f"| {label} | {count} | {duration:.0f} | {bystander_cells(bystander)} | {slow.cut} |"


def main(argv: list[str] | None = None) -> None:
    """Run both scenarios and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=20)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as tmp:
        saves = saves_row(args.saves, Path(tmp) / "saves")
        slow = [slow_row(args.slow, args.duration, Path(tmp) / "slow", (), "core.worker"),
                slow_row(args.slow, args.duration, Path(tmp) / "stock", ("-k", "gthread"), "gthread (stock)")]
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
