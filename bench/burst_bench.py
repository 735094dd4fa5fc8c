"""A burst of simultaneous POST /generate requests against the production server configuration.

The agent layer's "done when": 4 participants ask at once and the server spreads their image
jobs over 6 Stable Diffusion instances, one job per instance at a time. This starts
`gunicorn -c gunicorn.conf.py app:app` as a subprocess (MONGO_URI unset, so the embedded
store in a temporary DATA_DIR) pointed at a chat simulator and WebUI simulators with fixed
latencies running in this process, then fires each burst over HTTP from 4 threads released
by one barrier. Scenarios: type 0 with num 3 (3 image jobs per request, 12 in all) and
type 3 with one scheme and num 3 (3 scenes + 3 product shots, 6 per request, 24 in all).

Ideal image phase = ceil(jobs / instances) * SD latency; ideal burst = the longest GPT
chain of the type * GPT latency + the ideal image phase. "Max open jobs per instance" is
the most txt2img requests any simulator ever had open at once, queued ones included: the
pool must keep it at 1. Prints a Markdown table. Not part of the test run:

    python -m bench.burst_bench [--gpt-latency 0.3] [--sd-latency 1.0] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.load_server import start_server
from core.embedded_store import free_port
from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator

KEY = "bench-key"
BURST = 4


@dataclass(frozen=True)
class Scenario:
    """One kind of burst: the request body, image jobs per request, and the GPT critical path."""

    name: str
    body: dict
    images: int
    gpt_chain: int  # GPT calls one after another before the last image can start


SCENARIOS = [
    Scenario("type 0, num 3", {"appid": 0, "type": 0, "prompts": {"task": "设计一款运动辅助产品", "num": 3}}, 3, 3),
    Scenario("type 3, 1 scheme x num 3", {"appid": 0, "type": 3, "prompts": {
        "selectedSchemes": [{"designTexts": ["可折叠", "带计数"]}], "num": 3}}, 6, 2),
]


def post(url: str, body: dict) -> dict:
    """POST `body` as JSON and return the decoded envelope (whatever the status)."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        with e:
            return json.load(e)


@dataclass(frozen=True)
class Burst:
    """What one burst did: answers, the image jobs on each instance, its times against the ideal ones."""

    scenario: Scenario
    ok: int
    per_instance: list[int]
    image_phase: float
    ideal_images: float
    whole: float
    ideal_whole: float
    max_open: int  # the most txt2img requests any instance ever had open at once (since it started)

    @property
    def jobs(self) -> int:
        """The image jobs of the burst."""
        return sum(self.per_instance)

    def row(self) -> str:
        """Return the burst as a row of the table `main` prints."""
        return (f"| {self.scenario.name} | {self.ok}/{BURST} | {self.jobs} | "
                f"{'/'.join(map(str, self.per_instance))} | {self.image_phase:.2f} | {self.ideal_images:.2f} | "
                f"{self.whole:.2f} | {self.ideal_whole:.2f} | {self.max_open} |")


def burst(url: str, scenario: Scenario, sds: list[SDWebUISimulator], sd_latency: float,
          gpt_latency: float) -> Burst:
    """Fire one burst of the scenario, each request on a connection of its own, and return what it did."""
    before = [len(sd.jobs) for sd in sds]
    answers: list[dict] = [{}] * BURST
    barrier = threading.Barrier(BURST + 1)

    def one(i: int) -> None:
        barrier.wait()
        answers[i] = post(url, {**scenario.body, "username": f"bench-{i}"})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(BURST)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join()
    whole = time.monotonic() - started
    jobs = [job for sd, n in zip(sds, before) for job in sd.jobs[n:]]
    image_phase = max(j.end for j in jobs) - min(j.start for j in jobs) if jobs else float("nan")
    ideal_images = math.ceil(len(jobs) / len(sds)) * sd_latency
    return Burst(scenario, sum(1 for a in answers if a.get("success")),
                 [len(sd.jobs) - n for sd, n in zip(sds, before)], image_phase, ideal_images, whole,
                 scenario.gpt_chain * gpt_latency + ideal_images, max(sd.max_in_flight for sd in sds))


def main(argv: list[str] | None = None) -> None:
    """Run every scenario `--rounds` times against one gunicorn server and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpt-latency", type=float, default=0.3)
    parser.add_argument("--sd-latency", type=float, default=1.0)
    parser.add_argument("--instances", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    chat = ChatSimulator(api_key=KEY, latency=args.gpt_latency).start()
    sds = [SDWebUISimulator(latency=args.sd_latency).start() for _ in range(args.instances)]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="burst-bench-") as data_dir:
        server = start_server(port, Path(data_dir), chat.url, KEY, [sd.endpoint for sd in sds])
        try:
            url = f"http://127.0.0.1:{port}/generate"
            warm = post(url, {"appid": 0, "type": 0, "prompts": {"task": "warm-up", "num": 1}})
            if not warm.get("success"):
                raise RuntimeError(f"the warm-up request failed: {warm.get('message')}")
            print(f"{BURST} simultaneous requests, {args.instances} SD simulators at {args.sd_latency:g} s "
                  f"per image, GPT simulator at {args.gpt_latency:g} s per call (gunicorn, gthread)\n")
            print("| scenario | ok | image jobs | jobs per instance | image phase (s) | ideal (s) "
                  "| whole burst (s) | ideal (s) | max open jobs per instance |")
            print("|---|---|---|---|---|---|---|---|---|")
            for scenario in SCENARIOS:
                for _ in range(args.rounds):
                    print(burst(url, scenario, sds, args.sd_latency, args.gpt_latency).row(), flush=True)
        finally:
            server.stop()
    for sd in sds:
        sd.stop()
    chat.stop()


if __name__ == "__main__":
    main()
