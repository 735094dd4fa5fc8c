"""The embedded default store: a local MongoDB-wire-compatible server (nx-27017, SQLite-backed).

No MongoDB server can be installed from the package registries our machines reach, so
with `MONGO_URI` unset the app starts nx-27017 on a free loopback port with its files
under `DATA_DIR/mongo` and talks to it through pymongo like to any MongoDB. Tests start
it the same way. Data lives in SQLite files and survives restarts.

One store serves one data directory. If a store for that directory is already running
(the server is up while a researcher runs `flask export-study`, or a server killed
without cleanup left it behind), the newcomer connects to it instead of starting a
second one, and leaves it running when it exits.

This module is also the one place that knows how nx-27017 differs from MongoDB, and works
around it only when the database really is the embedded store (`serves(db)`), so a real
MongoDB gets standard documents written the standard way:
- GridFS uploads through GridFSBucket first ask whether `fs.files` is empty, which
  nx-27017 answers by scanning every file: each upload got slower as a study's images
  piled up. `write_gridfs_file` writes the same spec-conformant files directly. nx-27017
  also handles GridFS only in the default bucket `fs`.
- A datetime written by `$set` comes back as text, and a boolean written by `$set` as an
  integer. Stored documents are read through `core.db.Document` models, which parse such
  text back into a datetime; code that must filter on a flag stores a string status
  instead, which both stores keep as written.
- `find_one_and_update` drops `$setOnInsert` when it upserts; ObjectId-valued fields other
  than `_id` cannot be matched. Callers upsert with `update_one` and match by other keys.
- Its SQLite files run in WAL mode with synchronous=NORMAL, which syncs only at
  checkpoints: an acknowledged write can vanish in a power loss. A write that asks for
  `j: true` (core.db asks on every one) switches that database's connection to
  synchronous=FULL, an fsync of the WAL per commit. nx-27017 remembers the switch per
  database name, so a connection it closes and reopens (it keeps at most 100 databases
  open) is back at NORMAL for good; the server uses one database, the suite's shared store
  one per test, so tests that count fsyncs run a store of their own.
"""
from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bson import Binary
from pymongo.database import Database

log = logging.getLogger(__name__)


GRIDFS_CHUNK_SIZE = 255 * 1024  # the GridFS spec's default chunk size
# Addresses of the embedded stores this process started or joined: the databases `serves` knows.
_ADDRESSES: set[tuple[str, int]] = set()


class EmbeddedStoreError(RuntimeError):
    """The embedded store did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedStore:
    """One nx-27017 server process with its data in `data_dir`."""

    def __init__(self, data_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen | None = None
        self.adopted = False  # True when connected to a store some other process started

    @property
    def uri(self) -> str:
        """The MongoDB URI that reaches this store."""
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def pid_file(self) -> Path:
        """Where nx-27017 writes its process id."""
        return self.data_dir / "nx-27017.pid"

    def _running_port(self) -> int | None:
        """Return the port of a live nx-27017 already serving this data dir, if any (Linux)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError):
            return None
        if "nx_27017.nx_27017" not in args or str(self.data_dir) not in args or "--port" not in args:
            return None
        return int(args[args.index("--port") + 1])

    def start(self, timeout: float = 15.0) -> "EmbeddedStore":
        """Start the server (or join the one already serving this data dir) and wait until it accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        running = self._running_port()
        if running is not None and _accepts(self.host, running):
            log.info("embedded store already running for %s on port %d: using it", self.data_dir, running)
            self.port, self.adopted = running, True
            _ADDRESSES.add((self.host, self.port))
            return self
        command = [
            sys.executable, "-m", "nx_27017.nx_27017",
            "--data-dir", str(self.data_dir),
            "--host", self.host, "--port", str(self.port),
            "--log-file", str(self.data_dir / "nx-27017.log"),
            "--pid-file", str(self.data_dir / "nx-27017.pid"),
        ]
        log_file = open(self.data_dir / "nx-27017.out", "ab")
        self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        log_file.close()
        deadline = time.monotonic() + timeout
        while not _accepts(self.host, self.port):
            if self.process.poll() is not None:
                raise EmbeddedStoreError(f"nx-27017 exited with {self.process.returncode}; see {self.data_dir}/nx-27017.out")
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedStoreError(f"nx-27017 did not listen on {self.host}:{self.port} within {timeout}s")
            time.sleep(0.05)
        atexit.register(self.stop)
        _ADDRESSES.add((self.host, self.port))
        return self

    def stop(self) -> None:
        """Stop the server if this object started it, letting SQLite finish its writes."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def serves(db: Database) -> bool:
    """Return whether `db` is on an embedded store of this process (no I/O: the client's seeds)."""
    return any(address in _ADDRESSES for address in db.client.topology_description.server_descriptions())


def write_gridfs_file(db: Database, bucket: str, key: str, data: bytes, content_type: str) -> None:
    """Write one GridFS file with id and filename `key` as the spec lays it out, chunks first.

    The files document comes last, so the file is visible only once all of it is there;
    chunks left by an upload cut short before it are cleared first.
    """
    chunks = db[f"{bucket}.chunks"]
    chunks.delete_many({"files_id": key})
    if data:
        chunks.insert_many([
            {"files_id": key, "n": n, "data": Binary(data[offset:offset + GRIDFS_CHUNK_SIZE])}
            for n, offset in enumerate(range(0, len(data), GRIDFS_CHUNK_SIZE))
        ])
    db[f"{bucket}.files"].insert_one({
        "_id": key, "filename": key, "length": len(data), "chunkSize": GRIDFS_CHUNK_SIZE,
        "uploadDate": datetime.now(timezone.utc), "metadata": {"contentType": content_type},
    })

