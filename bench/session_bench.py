"""What one save costs when one sketch changes, as a session grows: blobs and history vs one document.

For each session size N, a participant saves N schemes (each with a random, incompressible
PNG of --image-kb KB), then saves again R times with one scheme's image replaced. Measured
per save: wall time over HTTP (/paint/save with the whole state, as the client sends it),
time in the store alone (sessions.save), and bytes written (new GridFS bytes + BSON size of
every document written). The old way ($set of the whole state into one participant document)
is measured in the same run on the same server, until MongoDB's 16 MB limit stops it. The
loaded session is checked against the one sent. Prints a Markdown table. Not a test:

    python -m bench.session_bench [--sizes 10,50,200] [--image-kb 500] [--repeats 3]
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import bson
from pymongo.database import Database
from pymongo.errors import DocumentTooLarge

from apps.paint import scheme_store, sessions
from core.embedded_store import EmbeddedStore
from core.factory import create_app

MB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n"
FIELDS = {"快速发散": "rapidDivergenceSchemes", "深入发散": "deepDivergenceSchemes", "收敛": "convergenceSchemes"}


def sketch(i: int, image_kb: int) -> dict:
    """Return a client-shaped scheme with a random PNG, a small SVG and a short stroke list."""
    data = PNG + os.urandom(image_kb * 1024 - len(PNG))
    points = [{"x": j + 0.5, "y": j * 2} for j in range(50)]
    return {"name": f"s{i}", "canvasSvg": f'<svg><path d="M{i} 0L1 1"/></svg>',
            "canvasImage": "data:image/png;base64," + base64.b64encode(data).decode("ascii"),
            "paths": [{"drawMode": True, "strokeColor": "#000", "strokeWidth": 5, "paths": points}],
            "texts": [{"text": "可折叠", "position": {"x": 10, "y": 20}}]}


def body_of(username: str, schemes: list[dict]) -> bytes:
    """Return the /paint/save body the client would send, all schemes in the rapid stage."""
    stages = {"准备": None, "快速发散": schemes, "深入发散": [], "收敛": [], "完成": None, "禁止": None}
    state = {"designSchemes": stages,
             "designTask": "设计一款运动辅助产品", "currentStage": "快速发散"}
    return json.dumps({"username": username, "data": state}, ensure_ascii=False).encode("utf-8")


def _ids(db: Database, name: str) -> set:
    return {doc["_id"] for doc in db[name].find({}, {"_id": 1})}


def bytes_written(db: Database, before: dict[str, set], username: str) -> int:
    """Return new GridFS bytes plus the BSON size of every document the save wrote."""
    total = 0
    new_files = list(_ids(db, "fs.files") - before["fs.files"])
    if new_files:
        total += sum(doc["length"] for doc in db["fs.files"].find({"_id": {"$in": new_files}}))
    for name in (scheme_store.SCHEMES, sessions.HISTORY):
        new = list(_ids(db, name) - before[name])
        if new:
            total += sum(len(bson.encode(doc)) for doc in db[name].find({"_id": {"$in": new}}))
    return total + len(bson.encode(db.participants.find_one({"username": username})))


def snapshot(db: Database) -> dict[str, set]:
    return {name: _ids(db, name) for name in ("fs.files", scheme_store.SCHEMES, sessions.HISTORY)}


@dataclass
class Row:
    """One session size's results."""

    size: int
    session_mb: float
    http_ms: float
    store_ms: float
    written: int
    load_ms: float
    old_ms: str
    old_written: str

    def markdown(self) -> str:
        """Return the row as a Markdown table line."""
        return (f"| {self.size} | {self.session_mb:.1f} | {self.http_ms:.0f} | {self.store_ms:.0f} "
                f"| {self.written / 1024:.0f} KB | {self.load_ms:.0f} | {self.old_ms} | {self.old_written} |")


def run_new(app, db: Database, size: int, image_kb: int, repeats: int) -> tuple[Row, list[dict]]:
    """Measure saves of the new format at one session size."""
    client = app.test_client()
    username = f"bench-{size}-{uuid.uuid4().hex[:6]}"
    client.post("/paint/start", json={"username": username})
    schemes = [sketch(i, image_kb) for i in range(size)]
    body = body_of(username, schemes)
    assert client.post("/paint/save", data=body, content_type="application/json").status_code == 200
    http, store, written = [], [], []
    for r in range(repeats):
        schemes[r % size] = sketch(size + r, image_kb)
        body = body_of(username, schemes)
        before = snapshot(db)
        started = time.perf_counter()
        response = client.post("/paint/save", data=body, content_type="application/json")
        http.append(time.perf_counter() - started)
        assert response.status_code == 200, response.get_json()
        written.append(bytes_written(db, before, username))
        schemes[(r + 1) % size] = sketch(size + repeats + r, image_kb)
        state = sessions.SavedState.model_validate({"designSchemes": {"快速发散": schemes},
                                                    "designTask": "设计一款运动辅助产品", "currentStage": "快速发散"})
        started = time.perf_counter()
        sessions.save(db, username, state)
        store.append(time.perf_counter() - started)
    started = time.perf_counter()
    loaded = client.post("/paint/start", json={"username": username}).get_json()["data"]
    load = time.perf_counter() - started
    assert json.dumps(loaded["rapidDivergenceSchemes"]) == json.dumps(schemes), "loaded session differs"
    row = Row(size, len(body) / MB, statistics.median(http) * 1000, statistics.median(store) * 1000,
              int(statistics.median(written)), load * 1000, "", "")
    return row, schemes


def run_old(db: Database, size: int, schemes: list[dict], repeats: int, image_kb: int) -> tuple[str, str]:
    """Measure the old one-document save ($set of every list) with the same schemes."""
    username = f"old-{size}-{uuid.uuid4().hex[:6]}"
    db.participants.insert_one({"username": username, "currentStage": "准备", "designTask": "", "legacyBench": True})
    times, sizes = [], []
    try:
        for r in range(repeats):
            schemes[r % size] = sketch(10 * size + r, image_kb)
            update = {"designTask": "设计一款运动辅助产品", "currentStage": "快速发散",
                      "rapidDivergenceSchemes": schemes, "deepDivergenceSchemes": [], "convergenceSchemes": []}
            started = time.perf_counter()
            db.participants.update_one({"username": username}, {"$set": update})
            times.append(time.perf_counter() - started)
            sizes.append(len(bson.encode(db.participants.find_one({"username": username}))))
    except DocumentTooLarge:
        return "fails", "over 16 MB: DocumentTooLarge"
    finally:
        db.participants.delete_one({"username": username})
    return f"{statistics.median(times) * 1000:.0f}", f"{statistics.median(sizes) / 1024:.0f} KB"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--image-kb", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(Path(tmp) / "mongo").start()
        try:
            app = create_app({"MONGO_URI": store.uri, "MONGO_DB": "session_bench", "DATA_DIR": tmp}, env={})
            with app.app_context():
                from core.db import get_db
                db = get_db()
            print(f"One scheme changed per save; images {args.image_kb} KB of random bytes; "
                  f"median of {args.repeats} saves; nx-27017 on loopback.\n")
            print("| schemes | session (MB of JSON) | new: save over HTTP (ms) | new: store only (ms) "
                  "| new: bytes written | new: load /paint/start (ms) | old: save (ms) | old: bytes written |")
            print("|---|---|---|---|---|---|---|---|")
            for size in (int(s) for s in args.sizes.split(",")):
                row, schemes = run_new(app, db, size, args.image_kb, args.repeats)
                row.old_ms, row.old_written = run_old(db, size, schemes, args.repeats, args.image_kb)
                print(row.markdown(), flush=True)
            app.extensions["mongo"].close()
        finally:
            store.stop()


if __name__ == "__main__":
    main()
