"""Throughput, latency, errors and memory of the production server under many participants.

Starts `gunicorn -c gunicorn.conf.py app:app` (one gthread worker; MONGO_URI unset, so the
worker starts the embedded nx-27017 store in a temporary DATA_DIR) against a chat simulator
and WebUI simulators with fixed latencies, which run in this process. The load comes from
a second process (bench.load_client) over loopback, one thread and keep-alive connection per
client. Scenarios:

1. save: `--clients` participants each call /paint/start, then /paint/save their whole state
   (4 sketches of 50-100 KB PNG data URIs, one redrawn per save) for `--duration` seconds;
   then every participant's session is loaded and compared with its last acknowledged save.
2. generate: `--gen-clients` clients each send `--rounds` /generate requests back to back,
   types 0 (num 6), 1 (a sketch image) and 3 (one scheme, num 3) in turn.

Reported per route: requests, errors, throughput, latency percentiles; per scenario: CPU
of every process (the client's shows it was not the bottleneck) and the peak RSS of the
worker and the store (/proc VmRSS polled and VmHWM after a reset). Not a test:

    python -m bench.load_bench [--clients 200] [--duration 30] [--gen-clients 20] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from bench.load_client import TIMEOUT
from bench.load_server import Server, start_server
from bench.proc_stats import Sampler, Usage
from core.embedded_store import free_port
from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator

KEY = "load-bench-key"
KIB_PER_MIB = 1024
ROUTES = ["/paint/start", "/paint/save", "/paint/start (check)",
          "/generate type 0", "/generate type 1", "/generate type 3", "/generate (all)"]


def percentile(values: list[float], p: float) -> float:
    """Return the nearest-rank `p`th percentile of `values`."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def run_client(job: dict[str, Any], limit: float) -> dict[str, Any]:
    """Run bench.load_client in its own process with `job`; return its results."""
    done = subprocess.run([sys.executable, "-m", "bench.load_client"], input=json.dumps(job).encode(),
                          stdout=subprocess.PIPE, timeout=limit, check=True)
    return json.loads(done.stdout)


def with_total(routes: dict[str, Any], label: str) -> dict[str, Any]:
    """Return `routes` plus a `label` row that merges them all."""
    errors: dict[str, int] = {}
    for r in routes.values():
        for message, n in r["errors"].items():
            errors[message] = errors.get(message, 0) + n
    merged = {"latencies": [x for r in routes.values() for x in r["latencies"]], "errors": errors,
              "first": min(r["first"] for r in routes.values()), "last": max(r["last"] for r in routes.values())}
    return {**routes, label: merged}


def route_rows(scenario: str, routes: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Return the Markdown rows of each route and the lines listing its errors."""
    rows, errors = [], []
    for label, r in sorted(routes.items(), key=lambda item: ROUTES.index(item[0])):
        lat, span = r["latencies"], r["last"] - r["first"]
        failed = sum(r["errors"].values())
        rows.append(f"| {scenario} | {label} | {len(lat)} | {failed} | {len(lat) / span:.1f} | "
                    f"{percentile(lat, 50):.3f} | {percentile(lat, 90):.3f} | {percentile(lat, 99):.3f} | "
                    f"{max(lat):.3f} |")
        if not label.endswith("(all)"):  # its errors are listed under their own routes
            errors += [f"- {scenario} {label}: {n} x {message}" for message, n in r["errors"].items()]
    return rows, errors


def observe(server: Server, job: dict[str, Any], limit: float) -> tuple[dict[str, Any], dict[str, Usage]]:
    """Run one scenario while watching the server's processes; return the client's results and their usage.

    The usage is by process: "worker 1" ... one per gunicorn worker, "store", "simulators"
    (this process) and "redis" when the server has a redis-server of the benchmark's.
    """
    pids = {f"worker {i}": pid for i, pid in enumerate(server.workers, 1)}
    pids.update(store=server.store, simulators=os.getpid())
    if server.redis_pid is not None:
        pids["redis"] = server.redis_pid
    sampler = Sampler(pids).start()
    try:
        result = run_client(job, limit)
    finally:
        usage = sampler.stop()
    return result, usage


def workers_usage(usage: dict[str, Usage]) -> Usage:
    """Return the usage of every gunicorn worker added up (CPU seconds, and RSS at the start and peak)."""
    workers = [u for name, u in usage.items() if name.startswith("worker ")]
    return Usage(sum(u.start_rss_kb for u in workers), sum(u.peak_rss_kb for u in workers),
                 sum(u.cpu_start for u in workers), sum(u.cpu_end for u in workers))


def measure(name: str, server: Server, job: dict[str, Any], limit: float) -> tuple[dict[str, Any], str]:
    """Run one scenario while watching the server; return the client's results and the usage row."""
    result, usage = observe(server, job, limit)
    usage["worker"] = workers_usage(usage)
    wall = result["wall"]

    def core(seconds: float) -> str:
        return f"{100 * seconds / wall:.0f}%"

    def rss(proc: str) -> str:
        return f"{usage[proc].start_rss_kb / KIB_PER_MIB:.0f} → {usage[proc].peak_rss_kb / KIB_PER_MIB:.0f}"

    row = (f"| {name} | {wall:.1f} | {core(result['cpu'])} | {core(usage['worker'].cpu())} | "
           f"{core(usage['store'].cpu())} | {core(usage['simulators'].cpu())} | "
           f"{rss('worker')} | {rss('store')} |")
    return result, row


def warm_up(port: int) -> None:
    """Send one small generation, so indexes, connections and templates are ready."""
    body = json.dumps({"appid": 0, "type": 0, "prompts": {"task": "warm-up", "num": 1}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/generate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        if not json.load(response).get("success"):
            raise RuntimeError("the warm-up generation failed")


def images_line(args: argparse.Namespace, sds: list[SDWebUISimulator], skip: int) -> str:
    """Summarise the image jobs of the generate scenario (all but the first `skip`) against the pool's ceiling."""
    jobs = sorted((job for sd in sds for job in sd.jobs), key=lambda j: j.start)[skip:]
    if not jobs:
        return "Images: none."
    wall = max(j.end for j in jobs) - min(j.start for j in jobs)
    return (f"Images: {len(jobs)} jobs on {len(sds)} instances in {wall:.1f} s = {len(jobs) / wall:.2f}/s "
            f"(ceiling {len(sds) / args.sd_latency:.2f}/s at {args.sd_latency:g} s each); most open jobs on "
            f"one instance at once: {max(sd.max_in_flight for sd in sds)}.")


def report(args: argparse.Namespace, rows: list[str], usage: list[str], errors: list[str],
           images: str, server_errors: list[str]) -> None:
    """Print the tables, the image-pool summary and every error."""
    print(f"\n`python -m bench.load_bench --clients {args.clients} --duration {args.duration:g} "
          f"--gen-clients {args.gen_clients} --rounds {args.rounds} --gpt-latency {args.gpt_latency:g} "
          f"--sd-latency {args.sd_latency:g}` ({os.cpu_count()} cores, everything on this machine)\n")
    print("| scenario | route | requests | errors | req/s | p50 (s) | p90 (s) | p99 (s) | max (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nCPU as % of one core over the loaded window; RSS in MB, at the start → peak of the scenario.\n")
    print("| scenario | window (s) | load client CPU | gunicorn worker CPU | nx-27017 CPU | simulators CPU "
          "| worker RSS | store RSS |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(usage))
    print("\n" + images)
    print("Errors: none." if not errors else "Errors:\n" + "\n".join(errors))
    if server_errors:
        print("Server log errors:\n" + "\n".join(server_errors))


def main(argv: list[str] | None = None) -> None:
    """Start the simulators and gunicorn, run both scenarios, print the tables and clean up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--gen-clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gpt-latency", type=float, default=0.3)
    parser.add_argument("--sd-latency", type=float, default=1.0)
    parser.add_argument("--instances", type=int, default=6)
    args = parser.parse_args(argv)
    chat = ChatSimulator(api_key=KEY, latency=args.gpt_latency).start()
    sds = [SDWebUISimulator(latency=args.sd_latency).start() for _ in range(args.instances)]
    try:
        with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
            port = free_port()
            server = start_server(port, Path(tmp), chat.url, KEY, [sd.endpoint for sd in sds])
            try:
                warm_up(port)
                save_job = {"scenario": "save", "port": port, "clients": args.clients,
                            "duration": args.duration, "seed": os.getpid()}
                saves, save_usage = measure("save", server, save_job, args.duration + 3 * TIMEOUT)
                warm_jobs = sum(len(sd.jobs) for sd in sds)
                gen_job = {"scenario": "generate", "port": port, "clients": args.gen_clients, "rounds": args.rounds}
                gens, gen_usage = measure("generate", server, gen_job, (args.rounds + 1) * TIMEOUT)
                images = images_line(args, sds, warm_jobs)
                rows, errors = route_rows("save", saves["routes"])
                more_rows, more_errors = route_rows("generate", with_total(gens["routes"], "/generate (all)"))
                server_errors = server.error_lines()
            finally:
                server.stop()
    finally:
        for sd in sds:
            sd.stop()
        chat.stop()
    report(args, rows + more_rows, [save_usage, gen_usage], errors + more_errors, images, server_errors)


if __name__ == "__main__":
    main()
