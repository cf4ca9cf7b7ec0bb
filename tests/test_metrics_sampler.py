"""The sampler's logic with a stand-in server view (the real server: test_metrics_agent.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nexus_ops.errors import OpenCodeUnavailable
from nexus_ops.metrics.catalogue import DESIRED_RUNNING
from nexus_ops.metrics.exposition import SamplerCollector
from nexus_ops.metrics.sampler import Reading, Sampler, session_values
from nexus_ops.models import Counters, ProcessRecord, ServerState
from nexus_ops.process import identify
from nexus_ops.store.samples import Retention, SampleStore


class StandIn:
    """What the sampler reads of a supervisor; the process is this test's own."""

    def __init__(self, answers: dict[str, Any], ready: bool = True) -> None:
        self.answers = answers
        self._ready = ready
        self.counters = Counters(starts=2, stops=1, restarts_by_reason={"crash": 1})
        self.request_observers: list[Any] = []
        self.client = self
        self.asked: list[str] = []
        self.phase: ServerState | None = None

    @property
    def record(self) -> ProcessRecord | None:
        return identify(os.getpid()) if self._ready else None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def desired(self) -> str:
        return "running"

    @property
    def state(self) -> ServerState:
        if self.phase is not None:
            return self.phase
        return ServerState.RUNNING if self._ready else ServerState.STOPPED

    async def get(self, path: str) -> Any:
        self.asked.append(path)
        answer = self.answers[path]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_sessions_by_status() -> None:
    statuses = {"a": {"type": "busy"}, "b": {"type": "retry", "attempt": 1}, "c": {"type": "idle"}}
    assert session_values(5, statuses) == [
        ("opencode_sessions", {"status": "idle"}, 3.0),
        ("opencode_sessions", {"status": "busy"}, 1.0),
        ("opencode_sessions", {"status": "retry"}, 1.0),
    ]
    assert session_values(0, {})[0][2] == 0.0


def test_a_tick_stores_a_full_reading_and_request_durations(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "metrics.db")
    server = StandIn({"/session": [{}, {}], "/session/status": {"x": {"type": "busy"}}})
    sampler = Sampler(store, server, port=1, interval=1.0)
    server.request_observers.append(sampler.observe_request)
    reading = asyncio.run(sampler.tick())
    assert reading.value("opencode_server_status") == 1.0
    assert reading.value("opencode_server_desired_running") == 1.0
    assert reading.value("opencode_server_starts_total") == 2.0
    assert reading.value("opencode_server_restarts_total", {"reason": "crash"}) == 1.0
    assert reading.value("opencode_sessions", {"status": "busy"}) == 1.0
    assert reading.value("opencode_sessions", {"status": "idle"}) == 1.0
    assert reading.value("opencode_process_resident_memory_bytes") > 0  # type: ignore[operator]
    assert reading.value("opencode_connections", {"state": "CLOSE_WAIT"}) == 0.0
    store.flush()
    assert {"opencode_request_duration_seconds", "nexus_agent_cpu_percent"} <= set(store.metrics())
    paths = {s.labels["path"] for s in store.series("opencode_request_duration_seconds")}
    assert paths == {"/session", "/session/status"}


def test_the_session_list_is_asked_at_most_every_few_seconds(tmp_path: Path) -> None:
    server = StandIn({"/session": [], "/session/status": {}})
    sampler = Sampler(SampleStore(tmp_path / "m.db"), server, port=1, interval=1.0)

    async def three() -> None:
        for _ in range(3):
            await sampler.tick()

    asyncio.run(three())
    assert server.asked.count("/session") == 1 and server.asked.count("/session/status") == 3


def test_a_failing_server_is_recorded_as_errors_not_raised(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "metrics.db")
    down = OpenCodeUnavailable("GET /session timed out")
    server = StandIn({"/session": down, "/session/status": down})
    sampler = Sampler(store, server, port=1)
    server.request_observers.append(sampler.observe_request)
    reading = asyncio.run(sampler.tick())
    assert reading.value("opencode_sessions", {"status": "idle"}) is None
    store.flush()
    outcomes = {s.labels["outcome"] for s in store.series("opencode_request_duration_seconds")}
    assert outcomes == {"error"}
    stopped = asyncio.run(Sampler(store, StandIn({}, ready=False), port=1).tick())
    assert stopped.value("opencode_server_status") == 0.0
    assert stopped.value("opencode_process_threads") is None


def test_the_loop_flushes_and_enforces_retention(tmp_path: Path) -> None:
    retention = Retention(raw=3600.0, minute=7200.0, hour=7200.0)
    store = SampleStore(tmp_path / "metrics.db", retention)
    old = np.arange(100.0) + 1_000_000.0  # 1970: far past every retention
    store.append_many("old_metric", {}, old, np.ones(100))
    store.flush()
    server = StandIn({"/session": [], "/session/status": {}})
    sampler = Sampler(store, server, port=1, interval=0.05, flush_interval=0.05)

    async def run_briefly() -> None:
        task = asyncio.create_task(sampler.run())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_briefly())
    assert "old_metric" not in store.metrics()
    threads = store.series("opencode_process_threads")[0].id
    assert len(store.read_raw(threads, 0, 2e10)[0]) >= 3
    assert server.request_observers == []  # the loop unhooks itself


def test_collector_exposes_the_latest_reading() -> None:
    reading = Reading(
        time=0.0,
        values=[
            ("opencode_process_resident_memory_bytes", {}, 5.0),
            ("opencode_connections", {"state": "CLOSE_WAIT"}, 3.0),
        ],
    )
    families = {
        f.name: f
        for f in SamplerCollector(lambda: reading, lambda: (10, 2), lambda: True).collect()
    }
    assert families["opencode_process_resident_memory_bytes"].samples[0].value == 5.0
    assert families["opencode_connections"].samples[0].labels == {"state": "CLOSE_WAIT"}
    assert families["nexus_agent_metrics_store_bytes"].samples[0].value == 10.0
    empty = {
        f.name: f for f in SamplerCollector(lambda: None, lambda: (0, 0), lambda: True).collect()
    }
    assert empty["opencode_process_threads"].samples == []


def test_metrics_say_desired_running_as_the_sampler_judged_it_and_a_stop_at_once() -> None:
    """/metrics (what Prometheus's server-down rule reads) agrees with the agent's own
    alerts: 0 in a planned start even though the operator wants the server running."""

    def exposed(sampled: float | None, wanted: bool) -> float:
        reading = None if sampled is None else Reading(0.0, [(DESIRED_RUNNING.metric, {}, sampled)])
        collector = SamplerCollector(lambda: reading, lambda: (0, 0), lambda: wanted)
        families = {f.name: f for f in collector.collect()}
        return float(families[DESIRED_RUNNING.metric].samples[0].value)

    assert exposed(0.0, wanted=True) == 0.0  # an operator's start or restart runs
    assert exposed(1.0, wanted=True) == 1.0  # running, or starting again after a crash
    assert exposed(1.0, wanted=False) == 0.0  # stopped since the last sample
    assert exposed(None, wanted=True) == 0.0  # nothing judged yet: no outage claimed


def test_a_planned_start_is_not_wanted_running_a_start_after_a_crash_is(tmp_path: Path) -> None:
    """The desired-running gauge: 0 while an operator's start runs, 1 in a crash loop."""
    server = StandIn({}, ready=False)
    sampler = Sampler(SampleStore(tmp_path / "m.db"), server, port=1)

    def desired(phase: ServerState) -> float | None:
        server.phase = phase
        return asyncio.run(sampler.tick()).value(DESIRED_RUNNING.metric)

    assert desired(ServerState.STOPPED) == 1.0
    assert desired(ServerState.STARTING) == 0.0  # the operator's start
    assert desired(ServerState.STARTING) == 0.0
    assert desired(ServerState.RUNNING) == 1.0
    server.counters.restarts_by_reason["operator"] = 1
    assert desired(ServerState.STARTING) == 0.0  # the operator's restart
    server.counters.restarts_by_reason["crash"] += 1
    assert desired(ServerState.STARTING) == 0.0  # still the same start
    assert desired(ServerState.BACKOFF) == 1.0
    assert desired(ServerState.STARTING) == 1.0  # a start after a crash: still down
    assert desired(ServerState.RUNNING) == 1.0
    server.counters.restarts_by_reason["hang"] = 1
    assert desired(ServerState.STARTING) == 1.0  # killed as hung and started at once


IMPORTS_PER_REQUEST = """
import asyncio, sys
import httpx
import nexus_ops.opencode

class Counting:
    searches = 0

    def find_spec(self, name, path=None, target=None):
        Counting.searches += 1
        return None

async def request(transport):
    try:
        await transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1:9/"))
    except httpx.ConnectError:
        pass

async def requests():
    transport = httpx.AsyncHTTPTransport()
    await request(transport)  # what the first request imports, once
    sys.meta_path.insert(0, Counting())
    for _ in range(20):
        await request(transport)
    await transport.aclose()

asyncio.run(requests())
print(Counting.searches)
"""


def test_the_agents_requests_do_not_search_for_modules() -> None:
    """httpcore asks for sniffio at every request: absent, that must not search sys.path."""
    import subprocess
    import sys

    found = subprocess.run(
        [sys.executable, "-c", IMPORTS_PER_REQUEST], capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "0", found.stderr


def test_a_crash_right_after_a_planned_start_is_wanted_running(tmp_path: Path) -> None:
    """The server crashed and was started again between two readings that both saw a
    start: the second start is the crash's, not the operator's."""
    server = StandIn({}, ready=False)
    sampler = Sampler(SampleStore(tmp_path / "m.db"), server, port=1)

    def desired(phase: ServerState) -> float | None:
        server.phase = phase
        return asyncio.run(sampler.tick()).value(DESIRED_RUNNING.metric)

    assert desired(ServerState.STOPPED) == 1.0
    assert desired(ServerState.STARTING) == 0.0  # the operator's start
    server.counters.starts += 1  # it ran, crashed (killed) and was started again
    server.counters.restarts_by_reason["crash"] += 1
    assert desired(ServerState.STARTING) == 1.0
    assert desired(ServerState.RUNNING) == 1.0
    server.counters.starts += 1  # an operator's restart while starting
    server.counters.restarts_by_reason["operator"] = 1
    assert desired(ServerState.STARTING) == 0.0
    assert desired(ServerState.STARTING) == 0.0
