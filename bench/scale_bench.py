"""One gunicorn worker against several on Redis, in one run: the burst and save scenarios side by side.

Two deployments run at once, each a gunicorn of its own (bench.load_server) with simulators
of its own in this process (so their counters are its alone):

- `-w 1`, no Redis: the SD pool, GPT limit and budgets in the worker's memory, as today;
- `-w N` (`--workers`, 4) with REDIS_URL: they live in a redis-server this benchmark starts.

Each writes to an nx-27017 on its DATA_DIR/mongo that this benchmark starts and that every
worker of it joins (bench.load_server, `own_store`): the same store setup for both; `-w 1`
differs from production only in who supervises the store (here the benchmark, there the
worker). The scenarios take turns between the two (A B, then B A), so a change in what
else runs on the machine falls on both alike; the idle one costs next to nothing.

Scenarios, each the other benchmarks' own code:
1. burst (bench.burst_bench): 4 simultaneous /generate, each on a connection of its own,
   `--rounds` times per kind; image phase against ideal (ceil(jobs / instances) x SD
   latency; goal with `-w N`: at most 1.1x), the most txt2img requests any WebUI simulator
   ever had open at once (goal 1: one job per instance at a time across every process),
   and the image jobs each instance ran.
2. save (bench.load_bench's, bench.load_client in its own process): `--clients`
   participants save their whole state back to back for `--duration` seconds, then every
   session is loaded and compared with its last acknowledged save; `--save-rounds` turns
   each, every turn the same participants again, each on a new connection (with several
   workers, maybe another worker than in the turn before). Saves/s, p50, p99, errors,
   sessions loaded wrong (goal: `-w N` at least 1.6x the saves/s of `-w 1`).
   CPU of every process over the loaded window (bench.proc_stats) and of the whole machine
   (/proc/stat), how often the store was busy (a thread running, waiting for a core or
   for the disk), and the CPU each save cost each process, say what limits it: the cores
   divided by the CPU of one save is the most this machine can save per second, and one
   nx-27017 process, whose writes to a database run one at a time, can save at most one
   core divided by its own share.

Prints Markdown tables. About 2.5 minutes with the defaults. Not a test:

    python -m bench.scale_bench [--workers 4] [--clients 200] [--duration 20] [--rounds 2] [--save-rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.burst_bench import BURST, SCENARIOS, Burst, burst, post
from bench.load_bench import observe, percentile, workers_usage
from bench.load_client import TIMEOUT
from bench.load_server import Server, start_server
from bench.proc_stats import Busy, Usage, machine_cpu
from core.embedded_store import free_port
from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator

KEY = "scale-bench-key"
IMAGE_GOAL, SAVE_GOAL = 1.1, 1.6
CORES = os.cpu_count() or 1


@dataclass
class Saves:
    """One turn of the save scenario on one deployment."""

    saves: int
    errors: int
    check_errors: int
    span: float  # from the first save's start to the last one's end
    p50: float
    p99: float
    wall: float  # the loaded window the CPU is counted over
    client_cpu: float
    usage: dict[str, Usage]
    machine_busy: float  # seconds of busy cores on the whole machine over the window, other work included
    error_kinds: dict[str, int]
    store_busy: Busy  # how often a thread of the store ran, waited for a core or for the disk

    @property
    def rate(self) -> float:
        """Saves per second."""
        return self.saves / self.span

    def cpu(self) -> dict[str, float]:
        """Return the CPU seconds of each kind of process over the window."""
        u = self.usage
        return {"client": self.client_cpu, "workers": workers_usage(u).cpu(), "store": u["store"].cpu(),
                "redis": u["redis"].cpu() if "redis" in u else 0.0, "simulators": u["simulators"].cpu()}


@dataclass
class Deployment:
    """One gunicorn deployment under test, its simulators, and what it did."""

    workers: int
    redis: bool
    port: int = 0
    server: Server | None = None
    chat: ChatSimulator | None = None
    sds: list[SDWebUISimulator] = field(default_factory=list)
    bursts: list[Burst] = field(default_factory=list)
    saves: list[Saves] = field(default_factory=list)

    @property
    def label(self) -> str:
        """How the tables name it."""
        return f"-w {self.workers}" + (" + Redis" if self.redis else "")

    def start(self, args: argparse.Namespace, tmp: Path, closing: ExitStack) -> Deployment:
        """Start its simulators and gunicorn (stopped when `closing` closes) and warm every worker up."""
        self.chat = ChatSimulator(api_key=KEY, latency=args.gpt_latency).start()
        closing.callback(self.chat.stop)
        for _ in range(args.instances):
            sd = SDWebUISimulator(latency=args.sd_latency).start()
            closing.callback(sd.stop)
            self.sds.append(sd)
        self.port = free_port()
        data_dir = tmp / f"w{self.workers}"
        data_dir.mkdir()
        self.server = start_server(self.port, data_dir, self.chat.url, KEY, [sd.endpoint for sd in self.sds],
                                   workers=self.workers, redis=self.redis, own_store=True)
        closing.callback(self.server.stop)
        warm_up(self.port, 2 * self.workers)
        return self


def warm_up(port: int, requests: int) -> None:
    """Send `requests` small generations at once, each on its own connection, so every worker has served some."""
    answers: list[dict[str, Any]] = [{}] * requests

    def one(i: int) -> None:
        answers[i] = post(f"http://127.0.0.1:{port}/generate",
                          {"appid": 0, "type": 0, "prompts": {"task": "warm-up", "num": 1}, "username": f"warm-{i}"})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [a.get("message") for a in answers if not a.get("success")]
    if failed:
        raise RuntimeError(f"{len(failed)} warm-up generations failed: {failed[0]}")


def save_turn(deployment: Deployment, args: argparse.Namespace, seed: int) -> Saves:
    """Run the load benchmark's save scenario once against `deployment` and summarise it."""
    job = {"scenario": "save", "port": deployment.port, "clients": args.clients, "duration": args.duration,
           "seed": seed}
    busy, store = machine_cpu()[0], Busy(deployment.server.store).start()
    try:
        result, usage = observe(deployment.server, job, args.duration + 3 * TIMEOUT)
    finally:
        store.stop()
    busy = machine_cpu()[0] - busy
    routes = result["routes"]
    saves, check = routes["/paint/save"], routes.get("/paint/start (check)", {"errors": {}})
    kinds: dict[str, int] = {}
    for route in routes.values():
        for message, n in route["errors"].items():
            kinds[message] = kinds.get(message, 0) + n
    latencies = saves["latencies"]
    return Saves(len(latencies), sum(saves["errors"].values()), sum(check["errors"].values()),
                 saves["last"] - saves["first"], percentile(latencies, 50), percentile(latencies, 99),
                 result["wall"], result["cpu"], usage, busy, kinds, store)


def pct(seconds: float, wall: float) -> str:
    """Return CPU seconds over a window as % of one core."""
    return f"{100 * seconds / wall:.0f}%"


def burst_table(deployments: list[Deployment]) -> list[str]:
    """Return the burst table's lines."""
    lines = ["| server | scenario | ok | image jobs | jobs per instance | image phase (s) | ideal (s) | phase / ideal "
             "| whole burst (s) | ideal (s) | max open jobs per instance |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in deployments:
        for b in d.bursts:
            lines.append(f"| {d.label} | {b.scenario.name} | {b.ok}/{BURST} | {b.jobs} | "
                         f"{'/'.join(map(str, b.per_instance))} | {b.image_phase:.2f} | {b.ideal_images:.2f} | "
                         f"{b.image_phase / b.ideal_images:.2f}x | {b.whole:.2f} | {b.ideal_whole:.2f} | "
                         f"{b.max_open} |")
    return lines


def save_tables(deployments: list[Deployment]) -> list[str]:
    """Return the save table's lines, then the CPU table's and the CPU-per-save table's."""
    one, many = deployments
    lines = ["| turn | server | saves | errors | saves/s | vs -w 1 (same turn) | p50 (s) | p99 (s) "
             "| sessions loaded wrong |", "|---|---|---|---|---|---|---|---|---|"]
    for turn, (a, b) in enumerate(zip(one.saves, many.saves), 1):
        for d, s in ((one, a), (many, b)):
            lines.append(f"| {turn} | {d.label} | {s.saves} | {s.errors} | {s.rate:.1f} | {s.rate / a.rate:.2f}x | "
                         f"{s.p50:.3f} | {s.p99:.3f} | {s.check_errors} |")
    lines += ["", f"CPU over each loaded window as % of one core (this machine has {CORES}: {100 * CORES}% is all of "
              "it); \"machine\" counts every process on it, other work included. \"nx-27017 busy\": how often "
              "one of the store's threads was running or waiting for a core (R) or for the disk (D), sampled "
              "every 10 ms (bench.proc_stats.Busy).", "",
              "| turn | server | window (s) | load client | gunicorn workers (each) | nx-27017 | nx-27017 busy: R or D "
              "(D) | redis-server | simulators | these processes | machine |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for turn, pair in enumerate(zip(one.saves, many.saves), 1):
        for d, s in zip(deployments, pair):
            cpu, wall = s.cpu(), s.wall
            each = [s.usage[name].cpu() for name in sorted(s.usage) if name.startswith("worker ")]
            lines.append(f"| {turn} | {d.label} | {wall:.1f} | {pct(cpu['client'], wall)} | "
                         f"{pct(cpu['workers'], wall)} ({' / '.join(pct(c, wall) for c in each)}) | "
                         f"{pct(cpu['store'], wall)} | {100 * s.store_busy.share(s.store_busy.either):.0f}% "
                         f"({100 * s.store_busy.share(s.store_busy.disk):.0f}%) | "
                         f"{pct(cpu['redis'], wall) if d.redis else '–'} | "
                         f"{pct(cpu['simulators'], wall)} | {pct(sum(cpu.values()), wall)} | "
                         f"{pct(s.machine_busy, wall)} |")
    lines += ["", "CPU milliseconds per acknowledged save, over every turn; the ceilings are what this machine "
              f"could save per second if it ran nothing else: {CORES} cores / all of it, and 1 core / the store's "
              "(one nx-27017 process writes to one database one write at a time).", "",
              "| server | load client | gunicorn workers | nx-27017 | redis-server | all | ceiling: cores | "
              "ceiling: store |", "|---|---|---|---|---|---|---|---|"]
    for d in deployments:
        saves = sum(s.saves for s in d.saves)
        per = {k: 1000 * sum(s.cpu()[k] for s in d.saves) / saves for k in ("client", "workers", "store", "redis")}
        total = sum(per.values())
        lines.append(f"| {d.label} | {per['client']:.1f} | {per['workers']:.1f} | {per['store']:.1f} | "
                     f"{per['redis']:.1f} | {total:.1f} | {1000 * CORES / total:.0f}/s | "
                     f"{1000 / per['store']:.0f}/s |")
    return lines


def rate(saves: list[Saves]) -> float:
    """Return the saves per second of every turn together."""
    return sum(s.saves for s in saves) / sum(s.span for s in saves)


def verdict(deployments: list[Deployment]) -> list[str]:
    """Return one line per goal: what was measured, and whether it was met."""
    one, many = deployments
    worst = max(b.image_phase / b.ideal_images for b in many.bursts)
    most_open = max(b.max_open for d in deployments for b in d.bursts)
    ratio = rate(many.saves) / rate(one.saves)
    turns = ", ".join(f"{b.rate / a.rate:.2f}x" for a, b in zip(one.saves, many.saves))

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    store_ms = 1000 * sum(s.cpu()["store"] for s in many.saves) / sum(s.saves for s in many.saves)
    busy = [100 * s.store_busy.share(s.store_busy.either) for s in many.saves]
    limit = (f"- what bounds saves with {many.label}: nx-27017 was busy {min(busy):.0f}-{max(busy):.0f}% of the "
             f"time; at {store_ms:.1f} ms of its CPU per save one store process saves at most {1000 / store_ms:.0f}/s "
             f"even with a core to itself, {1000 / store_ms / rate(one.saves):.2f}x the saves/s of {one.label}")
    return [f"- image phase with {many.label}: at most {worst:.2f}x ideal (goal ≤ {IMAGE_GOAL}x): "
            f"{mark(worst <= IMAGE_GOAL)}",
            f"- max open jobs per instance, every burst of both: {most_open} (goal 1): {mark(most_open == 1)}",
            f"- saves/s, every turn together, {many.label} / {one.label}: {rate(many.saves):.1f} / "
            f"{rate(one.saves):.1f} = {ratio:.2f}x (turns: {turns}; goal ≥ {SAVE_GOAL}x): {mark(ratio >= SAVE_GOAL)}",
            limit]


def main(argv: list[str] | None = None) -> None:
    """Start both deployments, run the scenarios on each in turn and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2, help="bursts of each kind per deployment")
    parser.add_argument("--save-rounds", type=int, default=2, help="turns of the save scenario per deployment")
    parser.add_argument("--gpt-latency", type=float, default=0.3)
    parser.add_argument("--sd-latency", type=float, default=1.0)
    parser.add_argument("--instances", type=int, default=6)
    args = parser.parse_args(argv)
    started = time.monotonic()
    deployments = [Deployment(1, False), Deployment(args.workers, True)]
    server_errors: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp, ExitStack() as closing:
        for d in deployments:
            d.start(args, Path(tmp), closing)
        for turn in range(args.rounds):
            for scenario in SCENARIOS:
                for d in deployments if turn % 2 == 0 else deployments[::-1]:
                    d.bursts.append(burst(f"http://127.0.0.1:{d.port}/generate", scenario, d.sds,
                                          args.sd_latency, args.gpt_latency))
                    print(f"{d.label}: {d.bursts[-1].row()}", flush=True)
        for turn in range(args.save_rounds):
            for d in deployments if turn % 2 == 0 else deployments[::-1]:
                d.saves.append(save_turn(d, args, seed=os.getpid() * 10 + d.workers))
                print(f"{d.label}: {d.saves[-1].rate:.1f} saves/s", flush=True)
        for d in deployments:
            d.bursts.sort(key=lambda b: SCENARIOS.index(b.scenario))
            server_errors[d.label] = d.server.error_lines()
    print(f"\n`python -m bench.scale_bench --workers {args.workers} --clients {args.clients} --duration "
          f"{args.duration:g} --rounds {args.rounds} --save-rounds {args.save_rounds} --gpt-latency "
          f"{args.gpt_latency:g} --sd-latency {args.sd_latency:g} --instances {args.instances}` ({CORES} cores, "
          f"everything on this machine, {time.monotonic() - started:.0f} s)\n")
    print(f"Bursts: {BURST} simultaneous /generate, {args.instances} SD simulators at {args.sd_latency:g} s an image, "
          f"GPT at {args.gpt_latency:g} s a call.\n")
    print("\n".join(burst_table(deployments)))
    print(f"\nSaves: {args.clients} participants saving back to back for {args.duration:g} s a turn "
          "(bench.load_client); the deployments take turns.\n")
    print("\n".join(save_tables(deployments)))
    print("\n" + "\n".join(verdict(deployments)))
    for d in deployments:
        kinds: dict[str, int] = {}
        for s in d.saves:
            for message, n in s.error_kinds.items():
                kinds[message] = kinds.get(message, 0) + n
        if kinds:
            print(f"Errors of {d.label}: " + json.dumps(kinds, ensure_ascii=False))
        if server_errors[d.label]:
            print(f"Server log errors of {d.label}:\n" + "\n".join(server_errors[d.label]))


if __name__ == "__main__":
    main()
