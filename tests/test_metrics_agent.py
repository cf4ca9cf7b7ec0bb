"""The sampler in a real agent, against the real OpenCode server: values present and sane."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import RunningAgent, points_of, start_agent, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_metrics_catalogue import assert_matches_catalogue

from nexus_ops.errors import AgentError
from nexus_ops.metrics.catalogue import DESIRED_RUNNING
from nexus_ops.metrics.frames import frame_of
from nexus_ops.paths import Layout
from nexus_ops.ui.metrics import append_points

pytestmark = pytest.mark.opencode


@pytest.fixture
def sampled_agent(nexus_env: dict[str, str]) -> Iterator[RunningAgent]:
    """A real agent sampling every second, with its server started."""
    nexus_env.update(NEXUS_METRICS_INTERVAL="1", NEXUS_METRICS_FLUSH_INTERVAL="1")
    running = start_agent(nexus_env)
    try:
        assert running.client.start(wait=True).ok
        yield running
    finally:
        running.client.close()
        running.stop()


def _latest(agent: RunningAgent, metric: str, **labels: str) -> float:
    frame = agent.client.query_metrics(metric, labels=labels or None, start="5m")
    assert not frame.empty, f"no samples of {metric} {labels}"
    return float(frame["value"].iloc[-1])


def _sample_after(agent: RunningAgent, metric: str, after: float) -> float | None:
    frame = agent.client.query_metrics(metric, start="1m")
    fresh = frame[frame["time"].astype("int64") / 1e9 > after]
    return float(fresh["value"].iloc[0]) if len(fresh) else None


def _steady_sample(
    agent: RunningAgent, metric: str, read: Callable[[], int]
) -> tuple[float, int] | None:
    """A fresh sample of ``metric`` taken while ``read()`` did not change, with that reading.

    A server that is still warming up opens and closes files and threads; a sample is
    comparable with psutil's reading only when the two readings around it agree.
    """
    before, asked = read(), time.time()
    sample = wait_for(lambda: _sample_after(agent, metric, asked), timeout=10, what=metric)
    return (float(sample), before) if read() == before else None  # type: ignore[arg-type]


def _server_password(agent: RunningAgent) -> str:
    path = Layout(agent.settings.home).server_password_file
    return path.read_text().strip()


def test_sampler_measures_the_real_server(sampled_agent: RunningAgent) -> None:
    agent = sampled_agent
    pid = agent.client.status().pid
    assert pid is not None
    wait_for(
        lambda: len(agent.client.query_metrics("opencode_process_threads", start="5m")) >= 3,
        timeout=30,
        what="three samples of the server",
    )
    server = psutil.Process(pid)
    # The sampler's number is the one psutil reports for the pid (the server has no
    # children): it lies between psutil's readings just before and after the sample.
    before, asked = server.memory_info().rss, time.time()
    rss = float(
        wait_for(
            lambda: _sample_after(agent, "opencode_process_resident_memory_bytes", asked),
            timeout=10,
            what="a fresh sample",
        )
    )
    after = server.memory_info().rss
    assert min(before, after) * 0.99 <= rss <= max(before, after) * 1.01
    assert 50e6 < rss < 4e9
    for metric, read in (
        ("opencode_process_threads", server.num_threads),
        ("opencode_process_open_fds", server.num_fds),
    ):
        sample, steady = wait_for(  # type: ignore[misc]
            partial(_steady_sample, agent, metric, read), timeout=60, what=f"a steady {metric}"
        )
        assert sample == pytest.approx(steady, abs=2), metric
    assert _latest(agent, "opencode_process_children") == len(server.children(recursive=True))
    assert _latest(agent, "opencode_connections", state="LISTEN") == 1
    assert _latest(agent, "opencode_server_status") == 1
    uptime = _latest(agent, "opencode_server_uptime_seconds")
    assert 0 < uptime <= time.time() - server.create_time() + 1
    cpu = agent.client.query_metrics("opencode_process_cpu_seconds_total", start="5m")["value"]
    assert (np.diff(cpu.to_numpy()) >= 0).all() and cpu.iloc[-1] > 0
    assert 0 <= _latest(agent, "opencode_process_cpu_percent") < 100 * psutil.cpu_count()
    assert _latest(agent, "nexus_agent_resident_memory_bytes") > 20e6
    for status in ("idle", "busy", "retry"):
        assert _latest(agent, "opencode_sessions", status=status) == 0


def test_sessions_and_request_durations(sampled_agent: RunningAgent) -> None:
    agent = sampled_agent
    url = agent.client.status().url
    auth = (agent.settings.opencode_username, _server_password(agent))
    created = httpx.post(f"{url}/session", json={}, auth=auth, timeout=60)
    assert created.status_code == 200, created.text
    wait_for(
        lambda: _latest(agent, "opencode_sessions", status="idle") == 1,
        timeout=30,
        what="the new session counted as idle",
    )
    durations = agent.client.query_metrics("opencode_request_duration_seconds", start="5m")
    paths = {
        dict(p.split("=") for p in labels.split(","))["path"]
        for labels in durations["labels"].unique()
    }
    assert {"/global/health", "/session", "/session/status"} <= paths
    assert durations["value"].between(0, 1.5).all()


def test_metrics_endpoint_and_store_size(sampled_agent: RunningAgent) -> None:
    agent = sampled_agent
    text = str(
        wait_for(
            lambda: "opencode_sessions{" in (t := agent.client.metrics_text()) and t,
            timeout=30,
            what="a sampler reading on /metrics",
        )
    )
    for name in (
        "opencode_process_cpu_seconds_total",
        "opencode_process_resident_memory_bytes",
        "opencode_process_open_fds",
        "opencode_process_threads",
        "opencode_process_children",
        'opencode_connections{state="LISTEN"} 1.0',
        'opencode_sessions{status="idle"}',
        "nexus_agent_metrics_store_bytes",
        "opencode_server_status 1.0",
        "opencode_request_duration_seconds_bucket",
    ):
        assert name in text, name
    assert_matches_catalogue(text)
    if shutil.which("promtool"):
        done = subprocess.run(
            ["promtool", "check", "metrics"],
            input=text,
            text=True,
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: agent.client.metrics_store()["raw_samples"] > 50, timeout=30)
    store = agent.client.metrics_store()
    database = Layout(agent.settings.home).metrics_database
    assert store["path"] == str(database)
    assert store["size_bytes"] == pytest.approx(
        database.stat().st_size + database.with_name("metrics.db-wal").stat().st_size, rel=0.5
    )
    assert store["retention_seconds"] == {"raw": 48 * 3600, "1m": 30 * 86400, "1h": 365 * 86400}
    assert "opencode_process_threads" in agent.client.metric_names()


def test_query_errors_name_the_parameter(sampled_agent: RunningAgent) -> None:
    client = sampled_agent.client
    with pytest.raises(AgentError, match="resolution='5m' is not a resolution") as bad:
        client.query_metrics("opencode_server_status", resolution="5m")
    assert bad.value.status == 400
    with pytest.raises(AgentError, match="start='yesterday' is not a time"):
        client.query_metrics("opencode_server_status", start="yesterday")


def test_stopping_the_server_is_sampled_as_down(sampled_agent: RunningAgent) -> None:
    agent = sampled_agent
    wait_for(lambda: _latest(agent, "opencode_server_status") == 1, timeout=30)
    assert agent.client.stop().ok
    wait_for(
        lambda: _latest(agent, "opencode_server_status") == 0,
        timeout=30,
        what="status 0 after the stop",
    )
    stops = _latest(agent, "opencode_server_stops_total")
    assert stops >= 1


# What the agent must not load for the console's queries: numpy and pandas (its
# store and queries work on the standard library's arrays), and the command-line tool
# that httpx's package imports when its extras happen to be installed.
NEVER_IN_THE_AGENT = {"numpy", "pandas", "rich", "pygments"}


def imported_packages(log: Path) -> set[str]:
    """The top-level packages of every module a process imported, from its stderr under
    PYTHONPROFILEIMPORTTIME (``import time: self | cumulative | name`` lines)."""
    found = set()
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            found.add(name.split(".")[0])
    return found


def test_metric_queries_leave_numpy_and_pandas_out_of_the_agent(
    nexus_env: dict[str, str],
) -> None:
    fast = {"NEXUS_METRICS_INTERVAL": "1", "NEXUS_METRICS_FLUSH_INTERVAL": "1"}
    agent = start_agent({**nexus_env, **fast, "PYTHONPROFILEIMPORTTIME": "1"})
    try:
        wait_for(
            lambda: len(agent.client.query_metrics("opencode_server_status", start="5m")) >= 4,
            timeout=30,
            what="a sample of the server's status",
        )
        for method, resolution in (("minmax", "auto"), ("minmax", "raw"), ("none", "1m")):
            agent.client.query_metrics(
                "opencode_server_status", method=method, resolution=resolution
            )
        agent.client.query_metrics("opencode_connections", start="2026-01-01T00:00:00Z")
        agent.client.query_points_many(
            [{"metric": "opencode_server_status", "start": span} for span in ("15m", "7d")]
        )
        maps = Path(f"/proc/{agent.proc.pid}/maps").read_text()
        imported = imported_packages(agent.log)
        # LTTB (tsdownsample) needs numpy: a query that asks for it loads it, and is answered.
        lttb = agent.client.query_metrics(
            "opencode_server_status", method="lttb", resolution="raw", max_points=2
        )
    finally:
        agent.client.close()
        agent.stop()
    assert "/numpy/" not in maps and "/pandas/" not in maps
    assert {"fastapi", "sqlite3"} <= imported, "the agent's own imports are the ones read"
    assert not imported & NEVER_IN_THE_AGENT, f"the agent loaded {imported & NEVER_IN_THE_AGENT}"
    assert len(lttb) == 3  # tsdownsample's fewest: first, one of the middle, last


def test_since_answers_what_is_new_and_a_batch_answers_like_single_queries(
    sampled_agent: RunningAgent,
) -> None:
    client = sampled_agent.client
    status = "opencode_server_status"
    begin = time.time() - 300
    wait_for(
        lambda: len(client.query_metrics(status, start=begin, method="none")) >= 4,
        timeout=30,
        what="four samples of the server's status",
    )
    whole = client.query_metrics(status, start=begin, method="none")
    times = (whole["time"].astype("int64") / 1e9).to_numpy()
    end, mid = float(times[-1]), float(times[-3])
    older = client.query_metrics(status, start=begin, end=mid, method="none")
    newer = client.query_metrics(status, start=begin, end=end, method="none", since=mid)
    assert (newer["time"].astype("int64") / 1e9).tolist() == times[-2:].tolist()
    full = client.query_metrics(status, start=begin, end=end, method="none")
    both = append_points(points_of(older), points_of(newer), begin)
    pd.testing.assert_frame_equal(frame_of(both), full)
    asked = [
        {"metric": status, "start": begin, "end": end, "method": "none"},
        {"metric": "opencode_connections", "start": begin, "end": end, "max_points": 10},
        {"metric": status, "start": begin, "end": end, "method": "none", "since": mid},
    ]
    answers = client.query_metrics_many(asked)
    for query, answer in zip(asked, answers, strict=True):
        pd.testing.assert_frame_equal(answer, client.query_metrics(**query))


def test_bad_since_and_batches_say_what_is_wrong(agent: RunningAgent) -> None:
    with pytest.raises(AgentError, match="since=nan is not a point in time"):
        agent.client.query_metrics("opencode_server_status", since=math.nan)
    with pytest.raises(AgentError, match="metric"):
        agent.client.query_metrics_many([{"metric": ""}])
    with pytest.raises(AgentError, match="method='m4'"):
        agent.client.query_metrics_many([{"metric": "m", "method": "m4"}])


def _exposed(agent: RunningAgent, metric: str) -> float:
    """The unlabelled value of ``metric`` on the agent's /metrics."""
    for family in text_string_to_metric_families(agent.client.metrics_text()):
        for sample in family.samples:
            if sample.name == metric and not sample.labels:
                return float(sample.value)
    raise AssertionError(f"{metric} is not on /metrics")


def test_desired_running_follows_the_operator_not_the_process(
    sampled_agent: RunningAgent,
) -> None:
    agent = sampled_agent
    desired = DESIRED_RUNNING.metric
    # 0 while the fixture's own start runs (a planned start), 1 once a reading saw it run.
    wait_for(lambda: _exposed(agent, desired) == 1, timeout=10, what="desired 1 once running")
    # A crash while wanted running is an outage: the operator still wants it running.
    pid = agent.client.status().pid
    assert pid is not None
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid), timeout=10, what="the killed server gone")
    assert _exposed(agent, desired) == 1
    wait_for(
        lambda: agent.client.status().pid not in (None, pid) and _exposed(agent, desired) == 1,
        timeout=60,
        what="the server restarted after the crash, still desired",
    )
    # The sampler (what the built-in ServerDown rule reads) agrees in every reading
    # since the kill, the restart's start included.
    restarted = time.time()
    wait_for(lambda: _sample_after(agent, desired, restarted) is not None, timeout=30)
    frame = agent.client.query_metrics(desired, start="2m")
    since = frame[frame["time"].astype("int64") / 1e9 > killed]["value"]
    assert len(since) and (since == 1).all(), since.tolist()
    assert agent.client.stop().ok
    assert _exposed(agent, desired) == 0
    assert agent.client.start(wait=True).ok
    wait_for(lambda: _exposed(agent, desired) == 1, timeout=10, what="desired 1 after a start")
