"""The embedded default store: a local MongoDB-wire-compatible server (nx-27017, SQLite-backed).

No MongoDB server can be installed from the package registries our machines reach, so
with `MONGO_URI` unset the app starts nx-27017 on a free loopback port with its files
under `DATA_DIR/mongo` and talks to it through pymongo like to any MongoDB. Tests start
it the same way. Data lives in SQLite files and survives restarts.

One store serves one data directory, and two kernel locks (flock) on files in it say who
is alive, where pid files could not: a pid outlives its process as a zombie, is reused,
and in a container the new store may get the very pid the old one wrote.
- `store.lock` is held by the store process itself (it inherits the locked descriptor),
  so it is free exactly when no store runs on the data, whoever started it;
- `supervisor.lock` is held by the one process that looks after the store: it starts the
  store, restarts it on the same port whenever it dies, and stops it at a clean stop.
  A store left running by a supervisor that was killed is adopted by the next one, which
  then stops it in its turn. `store.json` says on which port and pid the store runs.
Any other process on the same data (a researcher's `flask export-study` while the server
runs, a second app in one test process) joins the running store and leaves it alone.

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
import fcntl
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
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
    """The nx-27017 server of one data directory: started or adopted and supervised, or joined."""

    def __init__(self, data_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int | None = None,
                 timeout: float = 15.0) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.timeout = timeout  # seconds for a store to accept connections once started
        self.process: subprocess.Popen | None = None  # the store, when this process started it
        self.pid: int | None = None  # the store's process id, when this process supervises it
        self.supervising = False  # True: this process restarts the store and stops it at the end
        self.restarts = 0
        self._supervisor_fd: int | None = None
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()  # a restart and a stop never overlap
        self._watcher: threading.Thread | None = None

    @property
    def uri(self) -> str:
        """The MongoDB URI that reaches this store."""
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def joined(self) -> bool:
        """True when this process uses a store that another live process supervises."""
        return not self.supervising

    def _path(self, name: str) -> Path:
        return self.data_dir / name

    def start(self) -> "EmbeddedStore":
        """Start the store (or adopt or join the one on this data) and wait until it accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        fd = os.open(self._path("supervisor.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        if _try_lock(fd):
            try:
                self._take_over(fd)
            except BaseException:
                self._release_supervision()
                raise
            target = self._watch
        else:
            self._join()  # a live process supervises the store: use it; take over if that process ends
            target = functools.partial(self._succeed, fd)
        self._watcher = threading.Thread(target=target, name=f"store-watch-{self.port}", daemon=True)
        self._watcher.start()
        atexit.register(self.stop)
        return self

    def _take_over(self, supervisor_fd: int) -> None:
        """Become the supervisor (holding `supervisor_fd` locked): adopt the running store, or start one."""
        self._supervisor_fd, self.supervising = supervisor_fd, True
        if _store_alive(self._path("store.lock")):
            self._adopt()
        else:
            self._spawn()

    def _succeed(self, supervisor_fd: int) -> None:
        """Wait for the supervisor to end, then supervise the store in its place, until stopped."""
        fcntl.flock(supervisor_fd, fcntl.LOCK_EX)  # blocks while another process supervises
        with self._lifecycle:
            if self._stopping.is_set():
                os.close(supervisor_fd)
                return
            log.warning("the supervisor of the store on %s ended: supervising it here", self.data_dir)
            try:
                self._take_over(supervisor_fd)
            except (OSError, EmbeddedStoreError):
                log.exception("taking over the store failed")  # the next _watch turn starts it again
        self._watch()

    def _join(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            port = self._recorded().get("port")
            if port is not None and _accepts(self.host, port):
                self.port = port
                _ADDRESSES.add((self.host, self.port))
                log.info("embedded store of %s is supervised by another process: using it on port %d",
                         self.data_dir, port)
                return
            if time.monotonic() > deadline:
                raise EmbeddedStoreError(f"another process supervises the store of {self.data_dir}, "
                                         f"but it did not accept connections within {self.timeout}s")
            time.sleep(0.1)

    def _recorded(self) -> dict:
        try:
            return json.loads(self._path("store.json").read_text())
        except (OSError, ValueError):
            return {}

    def _adopt(self) -> None:
        """Take over a store whose supervisor died, once it proves to be ours and answering."""
        recorded = self._recorded()
        pid, port = recorded.get("pid"), recorded.get("port")
        deadline = time.monotonic() + self.timeout
        while port is None or not _accepts(self.host, port):
            if not _store_alive(self._path("store.lock")):
                log.warning("the store left on %s exited before it could be adopted: starting a new one",
                            self.data_dir)
                self._spawn()
                return
            if time.monotonic() > deadline:
                raise EmbeddedStoreError(f"a store holds {self.data_dir} but does not answer on port {port}; "
                                         f"stop process {pid} and start again")
            time.sleep(0.1)
        self.port, self.pid = port, pid
        _ADDRESSES.add((self.host, self.port))
        log.warning("adopted the embedded store left running on %s (port %d, pid %s)", self.data_dir, port, pid)

    def _spawn(self) -> None:
        """Start a store on the data, holding store.lock for as long as it lives."""
        lock = os.open(self._path("store.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if not _try_lock(lock):
                raise EmbeddedStoreError(f"a store already runs on {self.data_dir}")
            # No store runs on the data, so nx-27017's own pid file is stale by now; left in
            # place, its check (is that pid alive?) could refuse to start.
            self._path("nx-27017.pid").unlink(missing_ok=True)
            command = [
                sys.executable, "-m", "nx_27017.nx_27017",
                "--data-dir", str(self.data_dir),
                "--host", self.host, "--port", str(self.port),
                "--log-file", str(self._path("nx-27017.log")),
                "--pid-file", str(self._path("nx-27017.pid")),
            ]
            with open(self._path("nx-27017.out"), "ab") as out:
                # Its own session: a Ctrl-C or a signal to the server's process group is the
                # server's to pass on, so that the store is stopped after the server's last write.
                self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, pass_fds=(lock,),
                                                start_new_session=True)
        finally:
            os.close(lock)  # the store holds it now
        self.pid = self.process.pid
        self._path("store.json").write_text(json.dumps({"pid": self.pid, "port": self.port}))
        deadline = time.monotonic() + self.timeout
        while not _accepts(self.host, self.port):
            if self.process.poll() is not None:
                raise EmbeddedStoreError(f"nx-27017 exited with {self.process.returncode}; "
                                         f"see {self._path('nx-27017.out')}")
            if time.monotonic() > deadline:
                self._end_store()
                raise EmbeddedStoreError(f"nx-27017 did not listen on {self.host}:{self.port} within {self.timeout}s")
            time.sleep(0.05)
        _ADDRESSES.add((self.host, self.port))

    def _watch(self) -> None:
        """Wait for the store to die (its lock comes free) and start it again, until stopped."""
        delay = 0.1
        while True:
            lock = os.open(self._path("store.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while the store lives
            finally:
                os.close(lock)
            if self.process is not None:
                self.process.wait()  # reap it
            if self._stopping.is_set():
                return
            log.error("the embedded store on %s died; starting it again on port %d", self.data_dir, self.port)
            try:
                with self._lifecycle:
                    if self._stopping.is_set():
                        return
                    self._spawn()
            except (OSError, EmbeddedStoreError):
                log.exception("restarting the embedded store failed; trying again in %.1fs", delay)
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, 5.0)
                continue
            self.restarts += 1
            delay = 0.1
            log.warning("embedded store running again on port %d (restart %d)", self.port, self.restarts)

    def _end_store(self) -> None:
        """Stop the store this process supervises, letting SQLite finish its writes, and wait for it."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if not _wait_free(self._path("store.lock"), 10.0):
            os.kill(self.pid, signal.SIGKILL)
            _wait_free(self._path("store.lock"), 10.0)
        if self.process is not None:
            self.process.wait()

    def _release_supervision(self) -> None:
        if self._supervisor_fd is not None:
            os.close(self._supervisor_fd)
            self._supervisor_fd = None
        self.supervising = False

    def stop(self) -> None:
        """Stop the store if this process supervises it (a joined store is left running)."""
        self._stopping.set()
        if not self.supervising:
            return  # a successor still waiting for the supervisor's lock gives up once it gets it
        with self._lifecycle:
            self._end_store()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=10)
        self._path("store.json").unlink(missing_ok=True)
        self._release_supervision()
        self.process = self.pid = None


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock on `fd` without waiting; return whether it was free."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _store_alive(lock_path: Path) -> bool:
    """Return whether a store process holds `lock_path` (a supervisor's test: nobody else takes it)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)  # closing drops the lock if this took it


def _wait_free(lock_path: Path, timeout: float) -> bool:
    """Wait up to `timeout` seconds for the store holding `lock_path` to exit; return whether it did."""
    deadline = time.monotonic() + timeout
    while _store_alive(lock_path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


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

