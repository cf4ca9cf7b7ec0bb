"""Turn repeated looks at the managed process tree into counters and rates.

:func:`nexus_ops.process.tree_usage` looks at the tree once (found through
``/proc/<pid>/task/*/children``, never by walking the host's whole process
list). :class:`TreeMeter` keeps what lies between two looks: CPU time summed
over the tree's live members into a counter that only grows (a child that exits
takes its CPU seconds with it, but the counter keeps what it had counted), and
the CPU percent since the previous look.

>>> from nexus_ops.process import identify
>>> import os
>>> stats = TreeMeter().sample(identify(os.getpid()), port=None)
>>> stats is not None and stats.rss_bytes > 0
True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nexus_ops.models import ProcessRecord
from nexus_ops.process import self_usage, tree_usage


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


class Rate:
    """Percent of one core used between two readings of a CPU-seconds counter."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: tuple[float, float] | None = None

    def __call__(self, cpu_seconds: float) -> float:
        now = self._clock()
        last, self._last = self._last, (now, cpu_seconds)
        if last is None or now <= last[0]:
            return 0.0
        return max(0.0, 100.0 * (cpu_seconds - last[1]) / (now - last[0]))


class TreeMeter:
    """Samples one process tree again and again (``clock``: monotonic, for the rate)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = Rate(clock)
        self._cpu_seen: dict[int, float] = {}
        self._cpu_total = 0.0

    def sample(self, record: ProcessRecord | None, port: int | None) -> TreeStats | None:
        """Stats of the tree of ``record`` (sockets on ``port``); None when there is none."""
        usage = tree_usage(record, port) if record is not None else None
        if usage is None:
            return None
        for pid, seconds in usage.cpu_seconds.items():
            self._cpu_total += max(0.0, seconds - self._cpu_seen.get(pid, 0.0))
        self._cpu_seen = dict(usage.cpu_seconds)
        return TreeStats(
            pid=usage.pid,
            cpu_seconds_total=self._cpu_total,
            cpu_percent=self._rate(self._cpu_total),
            rss_bytes=usage.rss_bytes,
            threads=usage.threads,
            open_fds=usage.open_fds,
            children=usage.children,
            connections=usage.connections,
        )


class SelfMeter:
    """The agent's own CPU seconds, CPU percent and resident memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = Rate(clock)

    def sample(self) -> tuple[float, float, int]:
        """(CPU seconds, CPU percent since the last sample, resident bytes)."""
        cpu, rss = self_usage()
        return cpu, self._rate(cpu), rss
