"""Hard kills of a real gunicorn deployment: after each, the server serves again, nothing acknowledged lost.

Marker `crash` (`python -m pytest -m crash`; `.ci/run` runs it). Each trial saves a new
participant's session, kills a mix of the gunicorn master, its worker and the embedded store
with SIGKILL (as the OOM killer, `docker kill` or a power cut of one process does), then
checks the server answers again and every save acknowledged so far is there. When the
master is among the killed, the trial starts the server again as an operator or a
container runtime would; otherwise the server must recover by itself (gunicorn starts a
new worker, which takes over the store; the supervisor restarts a dead store). Half of the
trials run the server in its own PID namespace (`unshare -p`), as in a container, where a
new store can be given the very pid its killed predecessor wrote down. CRASH_TRIALS sets
the number of trials (50).
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.embedded_store import free_port
from tests.helpers import save_body, scheme

pytestmark = pytest.mark.crash

ROOT = Path(__file__).resolve().parent.parent
MIXES = (("store",), ("worker",), ("master",), ("master", "worker"), ("worker", "store"),
         ("master", "store"), ("master", "worker", "store"))
BACK_WITHIN = 30.0  # seconds for the server to serve again after a kill


def _processes() -> dict[int, tuple[int, str]]:
    """Return every process's parent pid and command line, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            found[int(entry.name)] = (int(fields[1]), cmdline)
    return found


class Deployment:
    """`gunicorn -c gunicorn.conf.py app:app` on a data directory, optionally in its own PID namespace."""

    def __init__(self, data_dir: Path, contained: bool) -> None:
        self.data_dir, self.contained = data_dir, contained
        self.port = free_port()
        self.launcher: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "DATA_DIR": str(self.data_dir),
               "GUNICORN_THREADS": "8", "MONGO_TIMEOUT_MS": "1000", "LOG_LEVEL": "WARNING"}
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"]
        if self.contained:
            command = ["unshare", "--pid", "--fork", "--mount-proc", *command]
        log = open(self.data_dir.parent / "gunicorn.log", "ab")
        self.launcher = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def roles(self) -> dict[str, list[int]]:
        """Return the pids of the master, its workers and the store, as the host sees them."""
        table = _processes()
        launcher = self.launcher.pid
        master = next((pid for pid, (ppid, _) in table.items() if ppid == launcher), None) \
            if self.contained else launcher
        # A store whose worker was killed may become the master's child in a PID namespace.
        workers = [pid for pid, (ppid, cmd) in table.items()
                   if master is not None and ppid == master and "gunicorn" in cmd]
        stores = [pid for pid, (_, cmd) in table.items() if "nx_27017" in cmd and str(self.data_dir) in cmd]
        return {"master": [master] if master in table else [], "worker": workers, "store": stores}

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request(method, path, body=json.dumps(body) if body is not None else None,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()

    def wait_serving(self, username: str) -> dict:
        """Return the session of `username` once /paint/start answers 200; fail after BACK_WITHIN."""
        deadline = time.monotonic() + BACK_WITHIN
        last: object = None
        while time.monotonic() < deadline:
            try:
                status, answer = self.request("POST", "/paint/start", {"username": username})
                if status == 200:
                    return answer["data"]
                last = (status, answer.get("message"))
            except (OSError, http.client.HTTPException, ValueError) as error:
                last = error
            time.sleep(0.2)
        raise AssertionError(f"not serving {BACK_WITHIN}s after the kill (last: {last}); "
                             f"see {self.data_dir.parent / 'gunicorn.log'}")

    def kill_everything(self) -> None:
        for pids in self.roles().values():
            for pid in pids:
                _kill(pid)
        if self.launcher is not None:
            _kill(self.launcher.pid)
            self.launcher.wait()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _save(deployment: Deployment, username: str) -> None:
    body = save_body(username, rapid=[scheme("kept")], task=f"task of {username}")
    status, answer = deployment.request("POST", "/paint/save", body)
    assert status == 200, answer


@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux's unshare is needed for contained trials")
def test_the_server_comes_back_after_every_mix_of_hard_kills(tmp_path):
    trials = int(os.environ.get("CRASH_TRIALS") or 50)
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode:
        pytest.skip("this machine does not allow PID namespaces (needs root): contained trials cannot run")
    deployments = {contained: Deployment(tmp_path / ("contained" if contained else "host") / "var", contained)
                   for contained in (False, True)}
    acknowledged: dict[bool, list[str]] = {False: [], True: []}
    came_back = 0
    try:
        for deployment in deployments.values():
            deployment.data_dir.mkdir(parents=True)
            deployment.start()
        for trial in range(trials):
            contained = trial % 2 == 1
            deployment, mix = deployments[contained], MIXES[(trial // 2) % len(MIXES)]
            username = f"trial-{trial}"
            deployment.wait_serving(username)
            _save(deployment, username)
            acknowledged[contained].append(username)
            roles = deployment.roles()
            assert all(roles[role] for role in ("master", "worker", "store")), roles
            for role in mix:
                for pid in roles[role]:
                    _kill(pid)
            if "master" in mix:
                deployment.launcher.wait()
                deployment.start()  # the operator's (or the container runtime's) restart
            # Everything acknowledged is there: the first save of this deployment and the last.
            for name in {acknowledged[contained][0], username}:
                assert deployment.wait_serving(name)["designTask"] == f"task of {name}", (trial, mix, name)
            came_back += 1
    finally:
        for deployment in deployments.values():
            deployment.kill_everything()
    assert came_back == trials
