"""Measure the managed process tree, and only it (psutil and Linux's /proc).

The tree is found from the server's pid downwards through
``/proc/<pid>/task/<tid>/children``, so a sample never walks the host's whole
process list (psutil's ``children()`` does; it is the fallback where that file
does not exist). CPU time is summed over the tree's live members into a counter
that only grows: a child that exits takes its CPU seconds with it, but the
counter keeps what it had counted.

>>> meter = TreeMeter()
>>> import os; stats = meter.sample(os.getpid(), port=None)
>>> stats is not None and stats.rss_bytes > 0
True
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# States always reported (as 0 when absent), so their series exist from the start.
CONNECTION_STATES = ("ESTABLISHED", "CLOSE_WAIT", "LISTEN", "FIN_WAIT1", "FIN_WAIT2", "LAST_ACK")


@dataclass(frozen=True)
class TreeStats:
    """One sample of a process tree."""

    pid: int
    cpu_seconds_total: float
    cpu_percent: float
    rss_bytes: int
    threads: int
    open_fds: int
    children: int
    connections: dict[str, int] = field(default_factory=dict)


def child_pids(pid: int, proc_root: Path = Path("/proc")) -> list[int] | None:
    """Direct children of ``pid`` from /proc (None where the kernel does not say)."""
    tasks = proc_root / str(pid) / "task"
    found: list[int] = []
    try:
        for task in tasks.iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                found.extend(int(p) for p in (task / "children").read_text().split())
    except FileNotFoundError:
        return [] if not (proc_root / str(pid)).exists() else None
    except (NotADirectoryError, PermissionError):
        return None
    return found


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents before children."""
    order, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        order.append(current)
        kids = child_pids(current)
        if kids is None:  # no /proc children file: ask psutil (it scans every pid)
            with contextlib.suppress(psutil.Error):
                order.extend(p.pid for p in psutil.Process(current).children(recursive=True))
            continue
        queue.extend(k for k in kids if k not in order)
    return order


class TreeMeter:
    """Samples one process tree again and again; keeps what a rate needs between samples.

    ``clock`` is a monotonic clock (for CPU percent).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_seen: dict[int, float] = {}
        self._cpu_total = 0.0
        self._last: tuple[float, float] | None = None  # (clock, cpu total)

    def sample(self, pid: int | None, port: int | None) -> TreeStats | None:
        """Stats of the tree under ``pid`` (connections on ``port``); None when it is gone."""
        if pid is None:
            self._procs.clear()
            return None
        members = [p for p in (self._process(q) for q in tree_pids(pid)) if p is not None]
        if not members or members[0].pid != pid:
            return None
        rss = threads = fds = 0
        cpu_now: dict[int, float] = {}
        for proc in members:
            with contextlib.suppress(psutil.Error), proc.oneshot():
                times = proc.cpu_times()
                cpu_now[proc.pid] = times.user + times.system
                rss += proc.memory_info().rss
                threads += proc.num_threads()
                fds += proc.num_fds()
        self._count_cpu(cpu_now)
        return TreeStats(
            pid=pid,
            cpu_seconds_total=self._cpu_total,
            cpu_percent=self._cpu_percent(),
            rss_bytes=rss,
            threads=threads,
            open_fds=fds,
            children=len(members) - 1,
            connections=connections_on(members[0], port) if port else {},
        )

    def _process(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is not None and proc.is_running():
            return proc
        try:
            proc = self._procs[pid] = psutil.Process(pid)
        except psutil.Error:
            self._procs.pop(pid, None)
            return None
        return proc

    def _count_cpu(self, cpu_now: dict[int, float]) -> None:
        for pid, seconds in cpu_now.items():
            self._cpu_total += max(0.0, seconds - self._cpu_seen.get(pid, 0.0))
        self._cpu_seen = cpu_now
        for gone in set(self._procs) - set(cpu_now):
            del self._procs[gone]

    def _cpu_percent(self) -> float:
        now = self._clock()
        last, self._last = self._last, (now, self._cpu_total)
        if last is None or now <= last[0]:
            return 0.0
        return 100.0 * (self._cpu_total - last[1]) / (now - last[0])


def connections_on(proc: psutil.Process, port: int) -> dict[str, int]:
    """The process's TCP sockets on its own ``port``, counted by state."""
    counts = Counter(dict.fromkeys(CONNECTION_STATES, 0))
    with contextlib.suppress(psutil.Error):
        for conn in proc.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port:
                counts[conn.status] += 1
    return dict(counts)


class SelfMeter:
    """The agent's own CPU seconds, CPU percent and resident memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._proc = psutil.Process(os.getpid())
        self._clock = clock
        self._last: tuple[float, float] | None = None

    def sample(self) -> tuple[float, float, int]:
        """(CPU seconds, CPU percent since the last sample, resident bytes)."""
        with self._proc.oneshot():
            times = self._proc.cpu_times()
            rss = self._proc.memory_info().rss
        cpu = times.user + times.system
        now = self._clock()
        last, self._last = self._last, (now, cpu)
        percent = 100.0 * (cpu - last[1]) / (now - last[0]) if last and now > last[0] else 0.0
        return cpu, percent, rss
