"""Fair share of the Stable Diffusion pool: 30 participants doing what the web client does, FIFO against fair.

Each participant has a loopback source address of its own (127.0.0.x) and User-Agent,
calls /paint/start and /paint/save, then does what the client does and never sends a
username to /generate: two type 0 requests with `num` 6 at once, and when both have
answered, four type 1 requests at once (one per saved sketch). Participants start one
after another over `--spread` seconds; `--at-once` adds a run where all start together.
Each run starts `gunicorn -c gunicorn.conf.py app:app` (bench.load_server) anew with
SD_QUEUE_ORDER fifo, then fair, against WebUI simulators at `--sd-latency` s an image and a
chat simulator at `--gpt-latency` s a call, all in this process. GUNICORN_THREADS and
GPT_MAX_CONCURRENCY are set high enough (200) that neither is the bottleneck.

Ideal makespan = all images / instances x SD latency + the type 0 GPT chain (3 calls:
products, scenes, sd_prompts). A participant's time to first result runs from their first
/generate to the first answer; its bound is what fair service guarantees whoever starts
when: every participant's first generation (participants x 6 images) / instances x SD
latency + the GPT chain. "Max jobs at once" is the most txt2img requests any simulator had
open at once, queued ones included: the pool must keep it at 1. Prints a Markdown table.
Not part of the test run:

    python -m bench.fair_bench [--participants 30] [--spread 29] [--at-once]
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load_server import start_server
from core.embedded_store import free_port
from simulators.chat import ChatSimulator
from simulators.png import render_png
from simulators.webui import SDWebUISimulator

KEY = "bench-key"
FIRST_ROUND, SECOND_ROUND = 2, 4  # type 0 requests at once, then type 1 requests at once
RAPID_IMAGES, DEEP_IMAGES = 6, 3  # images per request of each type
GPT_CHAIN = 3  # type 0: products, scenes, sd_prompts one after another before its images
WIDE = {"GUNICORN_THREADS": "200", "GPT_MAX_CONCURRENCY": "200"}  # so neither is the bottleneck
TASK = "设计一款运动辅助产品"


@dataclass
class Participant:
    """One participant's browser and what it saw: when it began generating, its first answer, its last."""

    index: int
    failures: list[str] = field(default_factory=list)
    began: float = 0.0
    first: float = 0.0
    done: float = 0.0

    @property
    def name(self) -> str:
        return f"fair-{self.index}"

    def sketch(self, k: int) -> dict[str, Any]:
        """Return their k-th sketch and its notes, as the client saves it."""
        png = render_png(32, 24, f"{self.name} sketch {k}")
        return {"name": f"方案{k}", "canvasSvg": '<svg xmlns="http://www.w3.org/2000/svg"/>',
                "canvasImage": "data:image/png;base64," + base64.b64encode(png).decode("ascii"), "paths": [],
                "texts": [{"text": f"{self.name} 想法 {k}", "position": {"x": 1, "y": 2}}]}

    def post(self, port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` from this participant's own address and User-Agent; return the envelope."""
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600,
                                                source_address=(f"127.0.0.{10 + self.index}", 0))
        try:
            connection.request("POST", path, json.dumps(body).encode(), {
                "Content-Type": "application/json", "User-Agent": f"bench browser {self.index}"})
            envelope = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        if not envelope.get("success"):
            self.failures.append(f"{path}: {envelope.get('message')}")
        return envelope

    def at_once(self, port: int, bodies: list[dict[str, Any]]) -> list[float]:
        """Send `bodies` to /generate at the same time; return when each was answered."""
        answered = [0.0] * len(bodies)

        def one(i: int) -> None:
            self.post(port, "/generate", bodies[i])
            answered[i] = time.monotonic()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return answered

    def run(self, port: int, start_at: float) -> None:
        """Start a session, save the sketches, then generate as the client does."""
        time.sleep(max(0.0, start_at - time.monotonic()))
        sketches = [self.sketch(k) for k in range(SECOND_ROUND)]
        self.post(port, "/paint/start", {"username": self.name})
        self.post(port, "/paint/save", {"username": self.name, "data": {
            "designSchemes": {"准备": None, "快速发散": sketches, "深入发散": [], "收敛": [], "完成": None, "禁止": None},
            "designTask": TASK, "currentStage": "快速发散"}})
        self.began = time.monotonic()
        rapid = {"appid": 0, "type": 0, "prompts": {"task": TASK, "num": RAPID_IMAGES}}
        self.first = min(self.at_once(port, [rapid] * FIRST_ROUND))
        deep = [{"appid": 0, "type": 1, "prompts": {
            "designTask": TASK, "designTexts": [t["text"] for t in s["texts"]], "designImage": s["canvasImage"],
            "schemeId": k}} for k, s in enumerate(sketches)]
        self.done = max(self.at_once(port, deep))


def run(order: str, spread: float, args: argparse.Namespace) -> str:
    """Run every participant against a fresh server in `order`; return the table row."""
    chat = ChatSimulator(api_key=KEY, latency=args.gpt_latency).start()
    sds = [SDWebUISimulator(latency=args.sd_latency).start() for _ in range(args.instances)]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fair-bench-") as data_dir:
        server = start_server(port, Path(data_dir), chat.url, KEY, [sd.endpoint for sd in sds],
                              {**WIDE, "SD_QUEUE_ORDER": order})
        try:
            people = [Participant(i) for i in range(args.participants)]
            origin = time.monotonic() + 0.5
            gap = spread / max(1, len(people) - 1)
            threads = [threading.Thread(target=p.run, args=(port, origin + i * gap)) for i, p in enumerate(people)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            errors = server.error_lines()
        finally:
            server.stop()
    for sd in sds:
        sd.stop()
    chat.stop()
    return row(order, spread, people, sds, errors, args)


def row(order: str, spread: float, people: list[Participant], sds: list[SDWebUISimulator], errors: list[str],
        args: argparse.Namespace) -> str:
    """Return the Markdown row of one run."""
    images = sum(len(sd.jobs) for sd in sds)
    gpt = GPT_CHAIN * args.gpt_latency
    makespan = max(p.done for p in people) - min(p.began for p in people)
    ideal = images / len(sds) * args.sd_latency + gpt
    bound = len(people) * RAPID_IMAGES / len(sds) * args.sd_latency + gpt
    firsts = sorted(p.first - p.began for p in people)
    failed = sum(len(p.failures) for p in people)
    if failed or errors:
        print(f"<!-- {order}: {failed} failed requests, e.g. {[f for p in people for f in p.failures][:3]}; "
              f"server errors {errors[:3]} -->")
    return (f"| {order} | {spread:g} | {images} | {makespan:.1f} | {ideal:.1f} | {makespan / ideal:.2f}x "
            f"| {firsts[0]:.1f} / {statistics.median(firsts):.1f} / {firsts[-1]:.1f} | {bound:.1f} "
            f"| {firsts[-1] / bound:.2f}x | {'/'.join(str(len(sd.jobs)) for sd in sds)} "
            f"| {max(sd.max_in_flight for sd in sds)} | {failed} |")


def main(argv: list[str] | None = None) -> None:
    """Run FIFO then fair (and both again all at once with --at-once) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=30)
    parser.add_argument("--spread", type=float, default=29.0, help="seconds from the first start to the last")
    parser.add_argument("--at-once", action="store_true", help="also run with everyone starting together")
    parser.add_argument("--gpt-latency", type=float, default=0.5)
    parser.add_argument("--sd-latency", type=float, default=1.0)
    parser.add_argument("--instances", type=int, default=6)
    args = parser.parse_args(argv)
    print(f"{args.participants} participants (2 x type 0 num 6, then 4 x type 1), {args.instances} SD simulators "
          f"at {args.sd_latency:g} s an image, GPT simulator at {args.gpt_latency:g} s a call; gunicorn "
          f"{', '.join(f'{k}={v}' for k, v in WIDE.items())}\n")
    print("| order | start spread (s) | images | makespan (s) | ideal (s) | ratio | first result min / median / "
          "max (s) | bound (s) | max / bound | jobs per instance | max jobs at once per instance | failed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for spread in [args.spread, *([0.0] if args.at_once else [])]:
        for order in ("fifo", "fair"):
            print(run(order, spread, args), flush=True)


if __name__ == "__main__":
    main()
