"""The agent's sampler: every ``NEXUS_METRICS_INTERVAL`` seconds, one reading of the server.

A reading holds the managed process tree (CPU, memory, threads, fds, children),
its TCP connections by state, sessions by status, the server's status, uptime
and start/stop counts, and the agent's own CPU and memory. Each reading goes to
the sample store (written in batches every ``NEXUS_METRICS_FLUSH_INTERVAL``) and
is what ``/metrics`` shows for the gauges it holds. Every request the agent makes
to the server (the supervisor's health probes, the sampler's session requests)
is stored as a sample of ``opencode_request_duration_seconds{path}``.

The busy and retrying sessions come from ``GET /session/status``: the
supervisor's latest answer when it is at most ``status_max_age`` seconds old (it
asks at every probe; its duration is stored with the reading), else asked here;
the full list of sessions, ``GET /session``, at most every
``session_list_interval`` seconds (5 s): it can be long, and only its length
(for the idle count) changes. The retention of the store is enforced by the
same loop, every ``retention_interval`` seconds.

>>> reading = Reading(time=0.0, values=[("opencode_server_status", {}, 1.0)])
>>> reading.value("opencode_server_status")
1.0
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from nexus_ops.errors import NexusOpsError
from nexus_ops.metrics import catalogue as m
from nexus_ops.metrics.proctree import SelfMeter, TreeMeter, TreeStats
from nexus_ops.models import (
    Counters,
    ProcessRecord,
    RestartReason,
    ServerState,
    SessionStatusAnswer,
)
from nexus_ops.store.samples import SampleStore

log = logging.getLogger(__name__)

SESSION_STATUSES = ("idle", "busy", "retry")

Sample = tuple[str, dict[str, str], float]
RequestObserver = Callable[[str, float, bool], None]


class OpenCodeApi(Protocol):
    """What the sampler asks the server (AsyncOpenCodeClient has it)."""

    async def get(self, path: str) -> Any: ...


class ServerView(Protocol):
    """What the sampler reads of the supervisor."""

    @property
    def record(self) -> ProcessRecord | None: ...

    @property
    def ready(self) -> bool: ...

    @property
    def counters(self) -> Counters: ...

    @property
    def desired(self) -> str: ...

    @property
    def state(self) -> ServerState: ...

    @property
    def client(self) -> OpenCodeApi: ...

    def recent_session_status(self, max_age: float) -> SessionStatusAnswer | None: ...

    request_observers: list[RequestObserver]


@dataclass(frozen=True)
class Reading:
    """One sample of everything, all at the same time (epoch seconds)."""

    time: float
    values: list[Sample] = field(default_factory=list)

    def value(self, metric: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The value of one series in this reading, or None."""
        wanted = dict(labels or {})
        return next((v for name, lab, v in self.values if name == metric and lab == wanted), None)


class Sampler:
    """Samples the server every ``interval`` seconds into ``store``.

    >>> # sampler = Sampler(store, supervisor, interval=1.0); await sampler.run()
    """

    def __init__(
        self,
        store: SampleStore,
        server: ServerView,
        port: int,
        interval: float = 5.0,
        flush_interval: float = 10.0,
        retention_interval: float = 600.0,
        session_list_interval: float = 5.0,
        status_max_age: float = 0.0,
        clock: Callable[[], float] = time.time,
        client: OpenCodeApi | None = None,
        sources: list[Callable[[], list[Sample]]] | None = None,
    ) -> None:
        self.store = store
        self.server = server
        self.client = client or server.client
        self.port = port
        self.interval = interval
        self.flush_interval = flush_interval
        self.retention_interval = retention_interval
        self.session_list_interval = max(interval, session_list_interval)
        self.status_max_age = status_max_age  # 0: always ask GET /session/status here
        self.latest: Reading | None = None
        self.sources = sources or []  # more series for every reading (the usage counts)
        self.errors = 0
        self._clock = clock
        self._tree = TreeMeter()
        self._self = SelfMeter()
        self._ids: dict[tuple[str, frozenset[tuple[str, str]]], int] = {}
        self._sessions: tuple[float, int] | None = None  # (next list due, sessions listed)
        self._last_state: ServerState | None = None
        self._failures = 0  # restarts for another reason than an operator's, seen so far
        self._starts = 0  # server processes started, seen so far
        self._planned_start = False

    # -- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Sample, flush and expire until cancelled."""
        self.server.request_observers.append(self.observe_request)
        next_flush = next_retention = 0.0
        try:
            while True:
                started = time.monotonic()
                await self._guarded(self.tick)
                if started >= next_flush:
                    await self._guarded(lambda: asyncio.to_thread(self.store.flush))
                    next_flush = started + self.flush_interval
                if started >= next_retention:
                    await self._guarded(lambda: asyncio.to_thread(self.store.enforce_retention))
                    next_retention = started + self.retention_interval
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            with contextlib.suppress(ValueError):
                self.server.request_observers.remove(self.observe_request)
            await asyncio.to_thread(self.store.flush)

    async def _guarded(self, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await step()
        except NexusOpsError as exc:  # a full disk must not stop the sampling
            self.errors += 1
            log.warning("metrics: %s", exc)
        except Exception:  # nor must a bug in one reading: log it and sample on
            self.errors += 1
            log.exception("metrics: a sampling step failed")

    async def tick(self) -> Reading:
        """Take one reading, store it and make it the latest."""
        record = self.server.record
        now = self._clock()
        tree, agent = await asyncio.to_thread(self._measure, record)
        values = self._server_values(record, now) + tree_values(tree) + agent_values(*agent)
        values += await self._session_values()
        for source in self.sources:
            values += source()
        reading = Reading(time=now, values=values)
        self.write(reading)
        self.latest = reading
        return reading

    def _measure(self, record: ProcessRecord | None) -> tuple[TreeStats | None, tuple[float, ...]]:
        tree = self._tree.sample(record, self.port)
        return tree, self._self.sample()

    # -- what a reading holds ------------------------------------------------------

    def _server_values(self, record: ProcessRecord | None, now: float) -> list[Sample]:
        counters = self.server.counters
        up = 1.0 if self.server.ready else 0.0
        uptime = max(0.0, now - record.create_time) if record else 0.0
        values: list[Sample] = [
            (m.SERVER_STATUS.metric, {}, up),
            (m.DESIRED_RUNNING.metric, {}, self._desired_running()),
            (m.SERVER_UPTIME.metric, {}, uptime),
            (m.SERVER_STARTS.metric, {}, float(counters.starts)),
            (m.SERVER_STOPS.metric, {}, float(counters.stops)),
        ]
        for reason, count in sorted(counters.restarts_by_reason.items()):
            values.append((m.SERVER_RESTARTS.metric, {"reason": reason}, float(count)))
        return values

    def _desired_running(self) -> float:
        """1 while the server should be serving: wanted running and not in a planned start.

        A start an operator asked for (start, restart) or the agent's own start is
        not an outage; a start after a crash, a hang or a failed start is. A start
        is judged when it is first seen: on entering ``starting``, or when another
        process was started since the last reading (a server that crashed between
        two readings that both saw ``starting``).
        """
        state, counters = self.server.state, self.server.counters
        failures = sum(
            count
            for reason, count in counters.restarts_by_reason.items()
            if reason != RestartReason.OPERATOR
        )
        new_start = counters.starts != self._starts
        if state is not ServerState.STARTING:
            self._planned_start = False
        elif self._last_state is not ServerState.STARTING or new_start:
            failing = self._last_state in (ServerState.BACKOFF, ServerState.FATAL)
            self._planned_start = failures == self._failures and not failing
        self._last_state, self._failures, self._starts = state, failures, counters.starts
        planned = self._planned_start
        return 1.0 if self.server.desired == "running" and not planned else 0.0

    async def _session_values(self) -> list[Sample]:
        if not self.server.ready:
            self._sessions = None
            return []
        if self._sessions is None or time.monotonic() >= self._sessions[0]:
            sessions = await self._timed_get("/session")
            if isinstance(sessions, list):
                due = time.monotonic() + self.session_list_interval
                self._sessions = (due, len(sessions))
        statuses = self._shared_status()
        if statuses is None:
            statuses = await self._timed_get("/session/status")
        if self._sessions is None or not isinstance(statuses, Mapping):
            return []
        return session_values(self._sessions[1], statuses)

    def _shared_status(self) -> Mapping[str, Any] | None:
        """The supervisor's recent answer of ``GET /session/status``, its duration
        stored as this reading's; None when there is none that recent."""
        if self.status_max_age <= 0:
            return None
        answer = self.server.recent_session_status(self.status_max_age)
        if answer is None:
            return None
        self._notify("/session/status", answer.seconds, True)
        return answer.statuses

    async def _timed_get(self, path: str) -> Any:
        started = time.perf_counter()
        try:
            body = await self.client.get(path)
        except NexusOpsError:
            self._notify(path, time.perf_counter() - started, False)
            return None
        self._notify(path, time.perf_counter() - started, True)
        return body

    def _notify(self, path: str, seconds: float, ok: bool) -> None:
        for observer in list(self.server.request_observers):
            observer(path, seconds, ok)

    def observe_request(self, path: str, seconds: float, ok: bool) -> None:
        """Store one request's duration (every observer of the supervisor calls this)."""
        labels = {"path": path, "outcome": "ok" if ok else "error"}
        self.store.append_rows(
            [(self._sid(m.REQUEST_DURATION.metric, labels), self._clock(), seconds)]
        )

    def write(self, reading: Reading) -> None:
        rows = [(self._sid(name, labels), reading.time, v) for name, labels, v in reading.values]
        self.store.append_rows(rows)

    def _sid(self, metric: str, labels: dict[str, str]) -> int:
        key = (metric, frozenset(labels.items()))
        sid = self._ids.get(key)
        if sid is None:
            sid = self._ids[key] = self.store.series_id(metric, labels)
        return sid


def tree_values(tree: TreeStats | None) -> list[Sample]:
    """The process tree's samples (none when no server runs)."""
    if tree is None:
        return []
    values: list[Sample] = [
        (m.PROCESS_CPU_SECONDS.metric, {}, tree.cpu_seconds_total),
        (m.PROCESS_CPU_PERCENT.metric, {}, tree.cpu_percent),
        (m.PROCESS_MEMORY.metric, {}, float(tree.rss_bytes)),
        (m.PROCESS_THREADS.metric, {}, float(tree.threads)),
        (m.PROCESS_OPEN_FDS.metric, {}, float(tree.open_fds)),
        (m.PROCESS_CHILDREN.metric, {}, float(tree.children)),
    ]
    values += [
        (m.CONNECTIONS.metric, {"state": s}, float(n)) for s, n in sorted(tree.connections.items())
    ]
    return values


def session_values(total: int, statuses: Mapping[str, Any]) -> list[Sample]:
    """Sessions by status: busy and retry from ``/session/status``, idle the rest."""
    counts = dict.fromkeys(SESSION_STATUSES, 0)
    for status in statuses.values():
        kind = status.get("type") if isinstance(status, Mapping) else None
        if kind in counts and kind != "idle":
            counts[str(kind)] += 1
    counts["idle"] = max(0, total - counts["busy"] - counts["retry"])
    return [(m.SESSIONS.metric, {"status": s}, float(n)) for s, n in counts.items()]


def agent_values(cpu_seconds: float, cpu_percent: float, rss: float) -> list[Sample]:
    values: list[Sample] = [
        (m.AGENT_CPU_SECONDS.metric, {}, cpu_seconds),
        (m.AGENT_CPU_PERCENT.metric, {}, cpu_percent),
        (m.AGENT_MEMORY.metric, {}, float(rss)),
    ]
    return [v for v in values if math.isfinite(v[2])]
