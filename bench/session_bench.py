"""What a session's save and start cost as it grows, against the least any server must do.

For each session size N, a participant saves N schemes (each with a random, incompressible
PNG of --image-kb KB, in the rapid stage), then, --repeats times: saves again with one
scheme's image replaced, and calls /paint/start. Requests go through the whole WSGI app
(Flask's test client: body reading, routing, validation, envelope; no socket), against
nx-27017 on loopback, and the answer is taken part by part, as a server sends it. Each
is set against a floor measured in the same run, in turns:

- save floor: orjson.loads of the body + SHA-256 of every sketch (each data URI's text)
  + writing the one new blob (decoding its base64, put_image);
- start floor: reading the N stored blobs (their chunks, one query per blob: nx-27017
  finds nothing for $in on fs.chunks) + base64 of each + orjson of the whole answer.

Times are medians. Peak memory is resident memory (RSS): the kernel's high-water mark of
this process during one more request (reset through /proc/self/clear_refs), above its RSS
just before (after malloc_trim has handed freed memory back), as a multiple of the save
body's size; the save's body is made inside that request, as a server holds a body it
received. "Allocated" is Python's own peak of allocations (tracemalloc), for comparison.
Bytes written: new GridFS bytes + the BSON size of every document the save wrote (schemes,
history, the participant). The session loaded is checked against the one sent. Prints a Markdown
table and whether its largest size meets the goals. Not a test:

    python -m bench.session_bench [--sizes 10,50,200] [--image-kb 500] [--repeats 5]
"""
from __future__ import annotations

import argparse
import base64
import ctypes
import gc
import hashlib
import logging
import os
import statistics
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson
import orjson
from flask.testing import FlaskClient
from pymongo.database import Database

from apps.paint import scheme_store, sessions
from bench import proc_stats
from core.db import get_db
from core.embedded_store import EmbeddedStore
from core.factory import create_app
from core.image_store import BUCKET, Image, put_image

MB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n"
PREFIX = "data:image/png;base64,"
TASK = "设计一款运动辅助产品"
JSON = "application/json"
GOAL_SAVE, GOAL_START, GOAL_MEMORY = 1.5, 2.0, 3.0
_LIBC = ctypes.CDLL("libc.so.6")  # glibc, for malloc_trim


def sketch(i: int, image_kb: int) -> dict[str, Any]:
    """Return a client-shaped scheme with a random PNG, a small SVG and a short stroke list."""
    data = PNG + os.urandom(image_kb * 1024 - len(PNG))
    points = [{"x": j + 0.5, "y": j * 2} for j in range(50)]
    return {"name": f"s{i}", "canvasSvg": f'<svg><path d="M{i} 0L1 1"/></svg>',
            "canvasImage": PREFIX + base64.b64encode(data).decode("ascii"),
            "paths": [{"drawMode": True, "strokeColor": "#000", "strokeWidth": 5, "paths": points}],
            "texts": [{"text": "可折叠", "position": {"x": 10, "y": 20}}]}


def body_of(username: str, schemes: list[dict[str, Any]]) -> bytes:
    """Return the /paint/save body the client would send, all schemes in the rapid stage."""
    stages: dict[str, Any] = {stage: [] if stage in sessions.SCHEME_FIELDS else None for stage in sessions.STAGES}
    stages[sessions.RAPID] = schemes
    state = {"designSchemes": stages, "designTask": TASK, "currentStage": sessions.RAPID}
    return orjson.dumps({"username": username, "data": state})


def _ids(db: Database, name: str) -> set[Any]:
    return {doc["_id"] for doc in db[name].find({}, {"_id": 1})}


COUNTED = (f"{BUCKET}.files", scheme_store.SCHEMES, sessions.HISTORY)


def snapshot(db: Database) -> dict[str, set[Any]]:
    """Return the ids of every document a save may add."""
    return {name: _ids(db, name) for name in COUNTED}


def bytes_written(db: Database, before: dict[str, set[Any]], username: str) -> int:
    """Return new GridFS bytes plus the BSON size of every document the save wrote."""
    new_files = list(_ids(db, f"{BUCKET}.files") - before[f"{BUCKET}.files"])
    total = sum(doc["length"] for doc in db[f"{BUCKET}.files"].find({"_id": {"$in": new_files}})) if new_files else 0
    for name in (scheme_store.SCHEMES, sessions.HISTORY):
        new = list(_ids(db, name) - before[name])
        if new:
            total += sum(len(bson.encode(doc)) for doc in db[name].find({"_id": {"$in": new}}))
    return total + len(bson.encode(db[sessions.PARTICIPANTS].find_one({"username": username})))


def timed(run: Callable[[], Any]) -> float:
    """Return the seconds `run()` takes, after a garbage collection so none falls inside."""
    gc.collect()
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def resident_peak(run: Callable[[], Any]) -> int:
    """Return the most bytes of memory this process held during `run()`, above what it held before."""
    gc.collect()
    _LIBC.malloc_trim(0)  # hand freed memory back first, or the request would reuse it unseen
    before_kb = proc_stats.memory_kb(os.getpid())[0]
    if not proc_stats.reset_peak(os.getpid()):
        raise RuntimeError("the kernel does not let this process reset its peak RSS (/proc/self/clear_refs)")
    run()
    return (proc_stats.memory_kb(os.getpid())[1] - before_kb) * 1024


def allocated_peak(run: Callable[[], Any]) -> int:
    """Return the most bytes Python had allocated at once during `run()`, above what it had before."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def save_floor(db: Database, body: bytes, changed: int) -> None:
    """Do the least a save must: read the body, hash every sketch, write the one new blob."""
    schemes = orjson.loads(body)["data"]["designSchemes"][sessions.RAPID]
    for scheme in schemes:
        hashlib.sha256(scheme["canvasImage"].encode("ascii")).digest()
    image = schemes[changed]["canvasImage"]
    put_image(db, Image(base64.b64decode(image[len(PREFIX):], validate=True), "image/png"))


def start_floor(db: Database, username: str, schemes: list[dict[str, Any]], keys: list[str]) -> bytes:
    """Do the least a start must: read each blob, base64 it, write the whole answer with orjson."""
    chunks = db[f"{BUCKET}.chunks"]
    built = []
    for scheme, key in zip(schemes, keys, strict=True):
        data = b"".join(chunk["data"] for chunk in chunks.find({"files_id": key}).sort("n", 1))
        built.append({**scheme, "canvasImage": PREFIX + base64.b64encode(data).decode("ascii")})
    lists = {field: [] for field in sessions.SCHEME_FIELDS.values()}
    lists[sessions.SCHEME_FIELDS[sessions.RAPID]] = built
    data = {"_id": "0" * 24, "username": username, "currentStage": sessions.RAPID, "designTask": TASK, **lists}
    return orjson.dumps({"success": True, "data": data, "code": 0, "message": ""})


def image_key(scheme: dict[str, Any]) -> str:
    """Return the image store's key of a scheme's sketch."""
    return hashlib.sha256(base64.b64decode(scheme["canvasImage"][len(PREFIX):])).hexdigest()


@dataclass
class Row:
    """One session size's results: times in ms, memory as multiples of the save body's size."""

    size: int
    body_mb: float
    save_ms: float
    save_floor_ms: float
    start_ms: float
    start_floor_ms: float
    save_peak: float
    save_floor_peak: float
    start_peak: float
    save_allocated: float
    start_allocated: float
    written: int

    @property
    def save_ratio(self) -> float:
        """The save's time over its floor's."""
        return self.save_ms / self.save_floor_ms

    @property
    def start_ratio(self) -> float:
        """The start's time over its floor's."""
        return self.start_ms / self.start_floor_ms

    def markdown(self) -> str:
        """Return the row as a Markdown table line."""
        return (f"| {self.size} | {self.body_mb:.1f} | {self.save_ms:.0f} | {self.save_floor_ms:.0f} "
                f"| {self.save_ratio:.2f} | {self.start_ms:.0f} | {self.start_floor_ms:.0f} | {self.start_ratio:.2f} "
                f"| {self.save_peak:.3f} | {self.save_floor_peak:.3f} | {self.start_peak:.3f} "
                f"| {self.written / 1024:.0f} KB | {self.save_allocated:.1f} / {self.start_allocated:.1f} |")

    def goals(self) -> str:
        """Return how the row meets the goals, each marked met or not."""
        def mark(value: float, goal: float) -> str:
            return f"{value:.3f} {'✓' if value <= goal else '✗'}"

        return (f"Goals at {self.size} schemes: save ≤ {GOAL_SAVE:g}× its floor: {mark(self.save_ratio, GOAL_SAVE)}; "
                f"start ≤ {GOAL_START:g}× its floor: {mark(self.start_ratio, GOAL_START)}; peak ≤ {GOAL_MEMORY:g}× the "
                f"body: save {mark(self.save_peak, GOAL_MEMORY)} (its floor's {self.save_floor_peak:.3f}), "
                f"start {mark(self.start_peak, GOAL_MEMORY)}.")


HEADER = ("| schemes | body (MB) | save (ms) | save floor (ms) | save / floor | start (ms) | start floor (ms) "
          "| start / floor | peak in save (× body) | peak in save floor (× body) | peak in start (× body) "
          "| bytes written per save | allocated in save / start (× body) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def post(client: FlaskClient, path: str, body: bytes) -> int:
    """Send `body` to `path`, take the answer part by part as a server sends it, and return its size."""
    response = client.post(path, data=body, content_type=JSON)
    assert response.status_code == 200, response.get_data()[:300]
    return sum(len(part) for part in response.iter_encoded())


def answer(client: FlaskClient, path: str, body: bytes) -> Any:
    """Send `body` to `path` and return the data of the answer."""
    response = client.post(path, data=body, content_type=JSON)
    assert response.status_code == 200, response.get_data()[:300]
    return orjson.loads(response.get_data())["data"]


def _ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def run_size(client: FlaskClient, db: Database, size: int, image_kb: int, repeats: int) -> Row:
    """Measure saves and starts of one session size, each next to its floor."""
    username = f"bench-{size}-{uuid.uuid4().hex[:6]}"
    start_body = orjson.dumps({"username": username})
    post(client, "/paint/start", start_body)
    schemes = [sketch(i, image_kb) for i in range(size)]
    post(client, "/paint/save", body_of(username, schemes))
    fresh = iter(range(size, size + 2 * repeats + 3))
    saves, save_floors, starts, start_floors, written = [], [], [], [], []
    for r in range(repeats + 1):
        changed = r % size
        # The floor writes a new blob of its own, so that the save still has one to write.
        schemes[changed] = sketch(next(fresh), image_kb)
        floor_body = body_of(username, schemes)
        schemes[changed] = sketch(next(fresh), image_kb)
        body = body_of(username, schemes)
        if r == repeats:
            break  # this last change is saved traced, below
        keys = [image_key(s) for s in schemes]
        save_floors.append(timed(lambda: save_floor(db, floor_body, changed)))
        before = snapshot(db)
        saves.append(timed(lambda: post(client, "/paint/save", body)))
        written.append(bytes_written(db, before, username))
        start_floors.append(timed(lambda: start_floor(db, username, schemes, keys)))
        starts.append(timed(lambda: post(client, "/paint/start", start_body)))
    # The body is made inside the measured call: the test client hands the app its very bytes,
    # where a server would hold a body it received.
    save_peak = resident_peak(lambda: post(client, "/paint/save", body_of(username, schemes))) / len(body)
    save_floor_peak = resident_peak(lambda: save_floor(db, body_of(username, schemes), 0)) / len(body)
    start_peak = resident_peak(lambda: post(client, "/paint/start", start_body)) / len(body)
    schemes[0] = sketch(next(fresh), image_kb)
    save_allocated = allocated_peak(lambda: post(client, "/paint/save", body_of(username, schemes))) / len(body)
    start_allocated = allocated_peak(lambda: post(client, "/paint/start", start_body)) / len(body)
    loaded = answer(client, "/paint/start", start_body)
    assert orjson.dumps(loaded["rapidDivergenceSchemes"]) == orjson.dumps(schemes), "loaded session differs"
    return Row(size, len(body) / MB, _ms(saves), _ms(save_floors), _ms(starts), _ms(start_floors),
               save_peak, save_floor_peak, start_peak, save_allocated, start_allocated,
               int(statistics.median(written)))


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--image-kb", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(Path(tmp) / "mongo").start()
        try:
            app = create_app({"MONGO_URI": store.uri, "MONGO_DB": "session_bench", "DATA_DIR": tmp}, env={})
            with app.app_context():
                db = get_db()
            print(f"One scheme changed per save; images {args.image_kb} KB of random bytes; medians of "
                  f"{args.repeats}; orjson {orjson.__version__}; {os.cpu_count()} CPUs, load average "
                  f"{os.getloadavg()[0]:.1f} at the start; nx-27017 on loopback.\n")
            print(HEADER)
            rows = []
            for size in (int(s) for s in args.sizes.split(",")):
                rows.append(run_size(app.test_client(), db, size, args.image_kb, args.repeats))
                print(rows[-1].markdown(), flush=True)
            print(f"\n{rows[-1].goals()}")
            app.extensions["mongo"].close()
        finally:
            store.stop()


if __name__ == "__main__":
    main()
