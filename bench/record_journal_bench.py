"""What becomes of generation records while the database is dead: kept on disk, then written once.

A server (the whole WSGI app, through Flask's test client) runs against a chat simulator,
three WebUI simulators and an nx-27017 of its own. The store's process is stopped, then
--generations type 0 generations (2 cards each) are answered; the journal's lines are
counted and the server is closed with its records still waiting. The store starts again
on the same files and a new server on the same DATA_DIR writes the records: how many the
database then holds, how many distinct, and how long until the journal was empty. Prints one Markdown table
row. Not a test:

    python -m bench.record_journal_bench [--generations 20]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
import uuid
from pathlib import Path

from pymongo import MongoClient

from apps.records import COLLECTION
from core.embedded_store import EmbeddedStore
from core.factory import close_app, create_app
from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator
from tests.helpers import RAPID_TWO, SIM_KEY, Sims, backend_settings, body


def run(generations: int) -> str:
    """Answer `generations` generations with the store dead, restart, and return the table row."""
    with tempfile.TemporaryDirectory() as tmp, ChatSimulator(api_key=SIM_KEY) as chat, \
            SDWebUISimulator() as sd1, SDWebUISimulator() as sd2, SDWebUISimulator() as sd3:
        store = EmbeddedStore(Path(tmp) / "mongo").start()
        settings = {**backend_settings(Sims(chat, [sd1, sd2, sd3])), "MONGO_URI": store.uri,
                    "MONGO_DB": f"journal_{uuid.uuid4().hex[:8]}", "MONGO_TIMEOUT_MS": 500, "DATA_DIR": tmp}
        try:
            server = create_app(settings, env={})
            client = server.test_client()
            assert client.post("/paint/start", json={"username": "alice"}).status_code == 200  # reached once
            store.stop()
            answered = sum(client.post("/generate", json=body(0, RAPID_TWO)).status_code == 200
                           for _ in range(generations))
            journal = server.extensions["record_journal"]
            kept = journal.waiting()
            close_app(server)

            store.start()
            started = time.monotonic()
            again = create_app(settings, env={})
            replayed = again.extensions["record_journal"]
            with MongoClient(store.uri) as direct:
                records = direct[settings["MONGO_DB"]][COLLECTION]
                while (records.count_documents({}) < kept or replayed.waiting()) and time.monotonic() - started < 60:
                    time.sleep(0.05)
                took = time.monotonic() - started
                stored = records.count_documents({})
                distinct = len({doc["_id"] for doc in records.find({}, {"_id": 1})})
            left = replayed.waiting()
            close_app(again)
        finally:
            store.stop()
    return f"| {generations} | {answered} | {kept} | {stored} | {distinct} | {took:.2f} | {left} |"


def main() -> None:
    """Print the row of one run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print("| generations | answered 200 | kept in the journal | records stored after restart | distinct | "
          "replay (s) | left in the journal |")
    print("|---|---|---|---|---|---|---|")
    print(run(args.generations))


if __name__ == "__main__":
    main()
