"""Count the fsync and fdatasync calls of a running process with strace (Linux; a measuring instrument).

    with FsyncCount(store.process.pid) as synced:
        ...  # the writes to count
    synced.calls  # fsync + fdatasync calls of every thread of the process meanwhile

`strace -f -c -p` attaches to every thread the process has and follows the ones it starts;
the count is its summary, written when it is interrupted. `FsyncCount.unavailable()` says
why it cannot run here (no strace, or ptrace not permitted), so a test can skip.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

SYSCALLS = ("fsync", "fdatasync")


class FsyncCount:
    """strace attached to `pid` for the length of a `with` block; `calls` counts its syncs."""

    def __init__(self, pid: int, timeout: float = 10.0) -> None:
        self.pid, self.timeout = pid, timeout
        self.calls: int | None = None
        self._summary = Path(tempfile.mkstemp(prefix="fsync-count-")[1])
        self._strace: subprocess.Popen | None = None

    @staticmethod
    def unavailable(pid: int) -> str | None:
        """Return why syncs of `pid` cannot be counted here, or None when they can."""
        if shutil.which("strace") is None:
            return "strace is not installed (apt-get install strace)"
        try:
            with FsyncCount(pid):
                pass
        except OSError as error:
            return str(error)
        return None

    def __enter__(self) -> FsyncCount:
        self._strace = subprocess.Popen(
            ["strace", "-f", "-c", "-e", f"trace={','.join(SYSCALLS)}", "-p", str(self.pid),
             "-o", str(self._summary)], stderr=subprocess.PIPE, text=True)
        # Its first line says it attached (or why it could not): only then do calls count.
        first = self._strace.stderr.readline()
        if "attached" not in first:
            self._strace.wait(self.timeout)
            self._summary.unlink()
            raise OSError(f"strace could not attach to {self.pid}: {first.strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._strace is not None
        self._strace.send_signal(signal.SIGINT)  # detach and write the summary
        self._strace.communicate(timeout=self.timeout)
        self.calls = _count(self._summary.read_text())
        self._summary.unlink()


def _count(summary: str) -> int:
    """Return the calls of SYSCALLS in an `strace -c` summary table."""
    total = 0
    for line in summary.splitlines():
        fields = line.split()
        if fields and fields[-1] in SYSCALLS:
            total += int(fields[3])  # % time, seconds, usecs/call, calls, [errors,] syscall
    return total
