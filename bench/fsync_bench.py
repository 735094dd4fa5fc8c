"""How many fsyncs the embedded store makes per acknowledged save: the cost of durability.

A participant of the load benchmark (4 sketches of 50-100 KB, one redrawn before every
save) saves --saves times through the whole WSGI app (Flask's test client) into an
nx-27017 of its own, reached through a TcpGate that counts the write commands on the
wire. strace counts the store's fsync and fdatasync calls meanwhile (tests/fsync_count.py;
it needs strace and ptrace permission). Prints one Markdown table row. Not a test:

    python -m bench.fsync_bench [--saves 100]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.load_bodies import Participant
from core.embedded_store import EmbeddedStore
from core.factory import close_app, create_app
from tests.fsync_count import FsyncCount
from tests.tcp_gate import TcpGate

WRITES = {"insert", "update", "delete", "findAndModify"}  # the commands that change data


def run(saves: int) -> str:
    """Make `saves` saves and return the table row of what they cost."""
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(Path(tmp) / "mongo").start()
        try:
            with TcpGate((store.host, store.port)) as gate:
                app = create_app({"MONGO_URI": gate.uri, "MONGO_DB": f"fsync_{uuid.uuid4().hex[:8]}",
                                  "DATA_DIR": tmp}, env={})
                client = app.test_client()
                participant = Participant("alice", seed=7)
                assert client.post("/paint/start", data=participant.start_body(),
                                   content_type="application/json").status_code == 200
                writes_before = gate.count_commands(WRITES)
                latencies = []
                with FsyncCount(store.pid) as synced:
                    for _ in range(saves):
                        sent = participant.next_save()
                        started = time.perf_counter()
                        response = client.post("/paint/save", data=sent, content_type="application/json")
                        latencies.append(time.perf_counter() - started)
                        assert response.status_code == 200, response.get_json()
                writes = gate.count_commands(WRITES) - writes_before
                close_app(app)
        finally:
            store.stop()
    return (f"| {saves} | {writes} | {synced.calls} | {synced.calls / saves:.2f} | "
            f"{synced.calls / writes:.2f} | {statistics.median(latencies) * 1000:.1f} |")


def main() -> None:
    """Print the row of one run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print("| saves | write commands | fsyncs | fsyncs per save | fsyncs per write | save p50 (ms) |")
    print("|---|---|---|---|---|---|")
    print(run(args.saves))


if __name__ == "__main__":
    main()
