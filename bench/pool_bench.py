"""How close one SDInstancePool gets to the ideal makespan over simulated WebUI instances.

M image jobs are submitted at once from M threads through one pool built with
`SDInstancePool.from_config` (production settings apart from SD_ENDPOINTS) over N
simulators of latency L each; the ideal makespan is ceil(M/N) * L. One more row lets one
of six instances die midway. Prints a Markdown table. Not part of the test run:

    python -m bench.pool_bench [--latency 0.3]
"""
from __future__ import annotations

import argparse
import logging
import math
import threading
import time
from dataclasses import dataclass

from agent.errors import SDError
from agent.pool import SDInstancePool, SDResult
from agent.sd import build_payload
from apps.paint.pipelines import SETTINGS_DIR
from apps.paint.pipelines.settings import load_sd_options
from config import from_env
from simulators.webui import SDWebUISimulator


@dataclass(frozen=True)
class Row:
    """The outcome of one (N, M) run."""

    instances: int
    jobs: int
    latency: float
    makespan: float
    utilisation: list[float]
    lost: int
    empty: int
    note: str = ""

    def markdown(self) -> str:
        """Return the row as a Markdown table line."""
        ideal = math.ceil(self.jobs / self.instances) * self.latency
        util = self.utilisation
        return (f"| {self.instances} | {self.jobs} | {self.latency:g} | {self.makespan:.3f} | {ideal:.3f} "
                f"| {self.makespan / ideal:.3f} | {min(util):.2f} / {sum(util) / len(util):.2f} "
                f"| {self.lost} | {self.empty} | {self.note} |")


def run(instances: int, jobs: int, latency: float, die_after: int | None = None) -> Row:
    """Submit `jobs` txt2img jobs at once over `instances` simulators and measure the makespan."""
    sims = [SDWebUISimulator(latency=latency).start() for _ in range(instances)]
    if die_after is not None:
        sims[-1].die_after(die_after)
    pool = SDInstancePool.from_config(from_env({"SD_ENDPOINTS": ",".join(sim.url for sim in sims)}))
    options = load_sd_options(SETTINGS_DIR)[("rapid", "scene")]  # the study's image settings
    results: list[SDResult | SDError | None] = [None] * jobs
    start = threading.Barrier(jobs + 1)

    def submit(i: int) -> None:
        start.wait()
        try:
            results[i] = pool.txt2img(build_payload(f"bench product idea {i}", "people, text", options))
        except SDError as e:
            results[i] = e

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(jobs)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    makespan = time.monotonic() - began
    pool.close()
    for sim in sims:
        sim.stop()
    busy = [sum(job.end - job.start for job in sim.jobs) for sim in sims]
    done = [r for r in results if isinstance(r, SDResult)]
    note = ""
    if die_after is not None:  # the dead instance's share moves to the others: a round more
        best = max(die_after, math.ceil((jobs - die_after) / (instances - 1))) * latency
        note = (f"1 instance dies after {die_after} jobs; best possible {best:.3f} s, "
                f"ratio to it {makespan / best:.3f}")
    return Row(instances, jobs, latency, makespan, [b / makespan for b in busy], jobs - len(done),
               sum(1 for r in done if not r.images or not all(image.data for image in r.images)), note)


def main(argv: list[str] | None = None) -> None:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per job (default 0.3)")
    parser.add_argument("--verbose", action="store_true", help="show the pool's warnings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR)
    print("| N | M | L (s) | makespan (s) | ideal (s) | ratio | utilisation min / mean | jobs lost "
          "| empty images | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for instances in (1, 3, 6):
        for jobs in (6, 12, 24):
            print(run(instances, jobs, args.latency).markdown(), flush=True)
    print(run(6, 24, args.latency, die_after=2).markdown())


if __name__ == "__main__":
    main()
