"""Memory and CPU of other processes, read from /proc (Linux), for the load benchmark.

Peak memory per scenario: `reset_peak` asks the kernel to restart a process's VmHWM
(writing 5 to /proc/<pid>/clear_refs, Linux 4.0+) and a `Sampler` thread also polls VmRSS,
so a kernel that refuses the reset still gives a sampled peak.

Whether a process is the bottleneck: `Busy` samples the states of its threads about a
hundred times a second, and counts how often at least one was running or waiting for a
core (R) or for the disk (D). A process busy nearly all the time never waits for work: it
is what the others wait for, whatever share of a core its CPU time shows.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Return the ids of the direct children of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        # The command name may hold spaces and parentheses: split after its last ')'.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def only_child(pid: int, marker: str) -> int:
    """Return the one child of `pid` whose command line holds `marker`; raise if there is not exactly one."""
    found = [child for child in children(pid) if marker in command_line(child)]
    if len(found) != 1:
        raise RuntimeError(f"expected one child of {pid} running {marker!r}, found {found}")
    return found[0]


def command_line(pid: int) -> str:
    """Return the command line of `pid`, arguments joined by spaces ('' once it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def memory_kb(pid: int) -> tuple[int, int]:
    """Return (VmRSS, VmHWM) of `pid` in KiB, or (0, 0) once it has ended."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time `pid` has used so far, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the name: state is field 3 of stat(5); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu() -> tuple[float, float]:
    """Return the seconds the machine's cores were busy and idle so far, every process counted (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS, idle / CLOCK_TICKS


def reset_peak(pid: int) -> bool:
    """Restart the kernel's peak-RSS count of `pid`; return whether the kernel allowed it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Usage:
    """What one watched process used during a scenario."""

    start_rss_kb: int = 0
    peak_rss_kb: int = 0
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    reset_ok: bool = False

    def cpu(self) -> float:
        """Return the CPU seconds used between start and stop."""
        return self.cpu_end - self.cpu_start


@dataclass
class Sampler:
    """Poll the RSS of named processes on a thread between `start()` and `stop()`."""

    pids: dict[str, int]
    interval: float = 0.2
    usage: dict[str, Usage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> Sampler:
        """Reset peaks, note CPU times and start polling; return self."""
        for name, pid in self.pids.items():
            self.usage[name] = Usage(memory_kb(pid)[0], cpu_start=cpu_seconds(pid), reset_ok=reset_peak(pid))
        self._thread.start()
        return self

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            rss, hwm = memory_kb(pid)
            usage = self.usage[name]
            usage.peak_rss_kb = max(usage.peak_rss_kb, rss, hwm if usage.reset_ok else 0)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self._sample()

    def stop(self) -> dict[str, Usage]:
        """Stop polling, take the last sample and CPU times; return the usage by name."""
        self._stopped.set()
        self._thread.join()
        self._sample()
        for name, pid in self.pids.items():
            self.usage[name].cpu_end = cpu_seconds(pid)
        return self.usage


def thread_states(pid: int) -> list[str]:
    """Return the state letter (R, S, D, ...) of every thread of `pid` ([] once it has ended)."""
    states = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return states
    for task in tasks:
        try:
            states.append((task / "stat").read_text().rpartition(")")[2].split()[0])
        except (OSError, IndexError):
            continue  # the thread ended while we looked
    return states


@dataclass
class Busy:
    """Sample the thread states of `pid` on a thread between `start()` and `stop()`."""

    pid: int
    interval: float = 0.01
    samples: int = 0
    running: int = 0  # samples with a thread running or waiting for a core
    disk: int = 0  # samples with a thread waiting for the disk
    either: int = 0

    def __post_init__(self) -> None:
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy-sampler", daemon=True)

    def start(self) -> Busy:
        """Start sampling; return self."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            states = thread_states(self.pid)
            self.samples += 1
            self.running += "R" in states
            self.disk += "D" in states
            self.either += "R" in states or "D" in states

    def stop(self) -> Busy:
        """Stop sampling; return self."""
        self._stopped.set()
        self._thread.join()
        return self

    def share(self, count: int) -> float:
        """Return `count` as a share of the samples."""
        return count / self.samples if self.samples else float("nan")
