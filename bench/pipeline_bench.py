"""Latency of the four /generate pipelines against simulators, beside their critical path.

    python -m bench.pipeline_bench [--runs 3] [--gpt 0.15] [--image 0.4] [--instances 6]

The simulators answer a GPT call in `--gpt` seconds and draw an image in `--image` seconds
on each of `--instances` SD instances. For each case the table gives the measured latency
(median of the runs), the critical path computed from the pipeline's step graph with those
latencies (the longest chain of GPT calls and image rounds), the critical path recomputed
from the latencies the trace measured for each step (so backend overheads are not counted
against the orchestration), and the same steps run one after another, measured in the
same run.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from agent.gpt import GPTClient
from agent.pool import SDInstancePool
from apps.paint.pipelines import PaintApp
from apps.records import Trace
from config import from_env
from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator
from tests.helpers import PNG_1PX

SKETCH = f"data:image/png;base64,{PNG_1PX}"
TASK = "设计一款运动辅助产品"

# A step graph: node -> (GPT calls or image jobs, the nodes it waits for). Image nodes are
# named "images*" and cost one image latency per round over the instances.
Graph = dict[str, tuple[int, tuple[str, ...]]]


def rapid_graph(n: int) -> Graph:
    """Return the step graph of type 0 with `n` products."""
    return {"products": (1, ()), "scenes": (1, ("products",)), "sd_prompts": (1, ("scenes",)),
            "abstracts": (1, ("products",)), "images": (n, ("sd_prompts",))}


def deep_graph() -> Graph:
    """Return the step graph of type 1."""
    return {"identify": (1, ()), "products": (1, ("identify",)), "scenes": (1, ("products",)),
            "sd_prompts": (1, ("scenes",)), "abstracts": (1, ("products",)),
            "concretes": (1, ("products",)), "images": (3, ("sd_prompts",))}


def naming_graph() -> Graph:
    """Return the step graph of type 2."""
    return {"names": (1, ()), "select": (1, ("names",))}


def group_two_graph(m: int) -> Graph:
    """Return the step graph of type 3 with `m` stimuli."""
    return {"scenes": (1, ()), "scene_prompts": (1, ("scenes",)), "concretes": (1, ()),
            "product_prompts": (1, ("concretes",)), "images": (2 * m, ("scene_prompts", "product_prompts"))}


CASES: list[tuple[str, int, dict[str, Any], Graph]] = [
    ("0 rapid, num 6", 0, {"task": TASK, "num": 6}, rapid_graph(6)),
    ("1 deep", 1, {"designTask": TASK, "designTexts": ["可折叠", "带计数"], "designImage": SKETCH,
                   "schemeId": 1}, deep_graph()),
    ("2 naming, 4 schemes", 2, {"designTask": TASK, "selectNum": 2, "schemes": [
        {"designTexts": [f"标注{i}"], "designImage": SKETCH} for i in range(4)]}, naming_graph()),
    ("3 group two, 1 scheme x 3", 3, {"selectedSchemes": [{"designTexts": ["可折叠"]}], "num": 3},
     group_two_graph(3)),
    ("3 group two, 3 schemes x 1", 3, {"selectedSchemes": [{"designTexts": [f"方案{i}"]} for i in range(3)],
                                       "num": 1}, group_two_graph(3)),
]


def longest_path(graph: Graph, cost: Callable[[str, int], float]) -> float:
    """Return the longest path through `graph` where node `name` with `size` costs cost(name, size)."""
    finish: dict[str, float] = {}

    def end(name: str) -> float:
        if name not in finish:
            size, deps = graph[name]
            finish[name] = max((end(dep) for dep in deps), default=0.0) + cost(name, size)
        return finish[name]

    return max(end(name) for name in graph)


def nominal_cost(gpt: float, image: float, instances: int) -> Callable[[str, int], float]:
    """Return the cost function of the simulators' fixed latencies."""
    return lambda name, size: math.ceil(size / instances) * image if name.startswith("images") else size * gpt


def traced_cost(trace: Trace) -> Callable[[str, int], float]:
    """Return the cost function of the step latencies this run's trace measured."""
    def cost(name: str, size: int) -> float:
        entries = trace.entries
        if name.startswith("images"):
            return max(e.queue_wait + e.latency for e in entries if e.kind == "image")
        return sum(e.latency for e in entries if e.kind == "llm" and e.step.endswith("." + name))
    return cost


def run_once(paint: PaintApp, gpt: GPTClient, pool: SDInstancePool, type_: int, prompts: dict[str, Any],
             sequential: bool) -> tuple[float, Trace]:
    """Run one generation; return its wall time and trace."""
    trace = Trace()
    request = paint.read(type_, prompts)
    started = time.monotonic()
    paint.run(type_, request, gpt, pool, trace, sequential=sequential)
    return time.monotonic() - started, trace


def main(argv: list[str] | None = None) -> None:
    """Run every case and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--gpt", type=float, default=0.15, help="seconds per GPT call")
    parser.add_argument("--image", type=float, default=0.4, help="seconds per image")
    parser.add_argument("--instances", type=int, default=6)
    args = parser.parse_args(argv)
    chat = ChatSimulator(api_key="bench", latency=args.gpt).start()
    sds = [SDWebUISimulator(latency=args.image).start() for _ in range(args.instances)]
    cfg = from_env({"AZURE_OPENAI_ENDPOINT": chat.url, "AZURE_OPENAI_API_KEY": "bench", "GPT_MAX_RETRIES": "0",
                    "GPT_MAX_CONCURRENCY": "32", "SD_ENDPOINTS": ",".join(sd.url for sd in sds)})
    gpt, pool, paint = GPTClient.from_config(cfg), SDInstancePool.from_config(cfg), PaintApp()
    nominal = nominal_cost(args.gpt, args.image, args.instances)
    try:
        print(f"GPT {args.gpt}s per call, image {args.image}s, {args.instances} SD instances, "
              f"median of {args.runs} runs\n")
        print("| case | GPT calls | images | measured s | critical path s | ratio | traced path s | ratio "
              "| sequential s | speed-up |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for label, type_, prompts, graph in CASES:
            run_once(paint, gpt, pool, type_, prompts, False)  # warm connections
            concurrent, traced, sequential = [], [], []
            for _ in range(args.runs):
                elapsed, trace = run_once(paint, gpt, pool, type_, prompts, False)
                concurrent.append(elapsed)
                traced.append(longest_path(graph, traced_cost(trace)))
                sequential.append(run_once(paint, gpt, pool, type_, prompts, True)[0])
            kinds = [e.kind for e in trace.entries]
            measured, path = statistics.median(concurrent), longest_path(graph, nominal)
            seen, serial = statistics.median(traced), statistics.median(sequential)
            print(f"| {label} | {kinds.count('llm')} | {kinds.count('image')} | {measured:.3f} | {path:.3f} "
                  f"| {measured / path:.2f} | {seen:.3f} | {measured / seen:.2f} | {serial:.3f} "
                  f"| {serial / measured:.1f}x |")
    finally:
        gpt.close()
        pool.close()
        chat.stop()
        for sd in sds:
            sd.stop()


if __name__ == "__main__":
    main()
