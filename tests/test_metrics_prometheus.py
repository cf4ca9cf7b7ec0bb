"""The Prometheus backend against a real Prometheus scraping a real agent.

Both backends must return the same series for the same period: every sample
Prometheus scraped is one the agent's store holds for that moment.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import RunningAgent, kill_everything_of, private_env, start_agent, wait_for
from prometheus_helpers import PrometheusServer, instant, running_prometheus, scrape_config

from nexus_ops.errors import AgentError
from nexus_ops.metrics.backends import MetricQuery, MetricsBackend
from nexus_ops.metrics.frames import QueryError
from nexus_ops.metrics.prometheus import PrometheusBackend, PrometheusUnavailable
from nexus_ops.paths import Layout, read_or_create_secret
from nexus_ops.ui.metrics import wanted_metrics

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.opencode,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed"),
]

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "nexus-ops-dashboard.json"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, opencode_bin: Path
) -> Iterator[tuple[RunningAgent, PrometheusServer]]:
    """A real agent (sampling every second, server started) scraped by a real Prometheus."""
    root = tmp_path_factory.mktemp("stack")
    env = private_env(root / "agent", {"NEXUS_OPENCODE_BIN": str(opencode_bin)})
    env.update(NEXUS_METRICS_INTERVAL="1", NEXUS_METRICS_FLUSH_INTERVAL="1")
    agent = start_agent(env)
    try:
        assert agent.client.start(wait=True).ok
        token = Layout(agent.settings.home).agent_token_file
        target = f"127.0.0.1:{agent.settings.agent_port}"
        with running_prometheus(root / "prometheus", scrape_config(target, token)) as prom:
            yield agent, prom
    finally:
        agent.client.close()
        agent.stop()
        kill_everything_of(env)


def _scraped(prom: PrometheusServer, metric: str) -> int:
    result = instant(prom.url, f"count_over_time({metric}[5m])")
    return int(float(result[0]["value"][1])) if result else 0  # type: ignore[index]


def _by_series(frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        str(labels): ((rows["time"].astype("int64") / 1e9).to_numpy(), rows["value"].to_numpy())
        for labels, rows in frame.groupby("labels")
    }


@pytest.mark.parametrize(
    ("metric", "labels"),
    [
        ("opencode_process_resident_memory_bytes", None),
        ("opencode_process_cpu_seconds_total", None),
        ("opencode_connections", None),
        ("opencode_sessions", None),
        ("opencode_server_status", None),
    ],
)
def test_both_backends_return_the_same_series(stack, metric: str, labels: dict | None) -> None:
    agent, prom = stack
    wait_for(lambda: _scraped(prom, metric) >= 8, timeout=60, what=f"8 scrapes of {metric}")
    backend: MetricsBackend = PrometheusBackend(prom.url)
    end = time.time()
    query = MetricQuery(metric, start=end - 300, end=end, method="none", max_points=100_000)
    from_prometheus = backend.query(query)
    time.sleep(1.5)  # the store's flush after the last scrape
    from_store = agent.client.query_metrics(
        metric, start=end - 400, end=end + 5, method="none", max_points=100_000, resolution="raw"
    )
    scraped, stored = _by_series(from_prometheus), _by_series(from_store)
    # Every reading is stored, and a scrape sees the latest one: each scraped series is
    # stored. A socket state held for less than a scrape interval (SYN_RECV) may be
    # stored and never scraped, and one held for a few seconds (TIME_WAIT) is scraped
    # only a few times; the steady states are scraped every time.
    assert set(scraped) <= set(stored)
    if metric != "opencode_connections":
        assert set(scraped) == set(stored)
        assert all(len(times) >= 8 for times, _ in scraped.values())
    assert max(len(times) for times, _ in scraped.values()) >= 8
    assert list(from_prometheus.columns) == list(from_store.columns)
    for labels_text, (times, values) in scraped.items():
        store_times, store_values = stored[labels_text]
        for t, v in zip(times, values, strict=True):
            # The value a scrape at t saw is the latest reading at t; a reading being
            # taken at that very moment may be the one before or after it.
            i = int(np.searchsorted(store_times, t, side="right")) - 1
            near = store_values[max(0, i - 1) : i + 2]
            assert v in near, f"{labels_text} at {t}: scraped {v}, stored {near}"


def test_downsampled_and_rollup_queries(stack) -> None:
    _, prom = stack
    wait_for(lambda: _scraped(prom, "opencode_process_threads") >= 12, timeout=60)
    backend = PrometheusBackend(prom.url)
    end = time.time()
    raw = backend.query(
        MetricQuery(
            "opencode_process_resident_memory_bytes", start=end - 600, end=end, method="none"
        )
    )
    small = backend.query(
        MetricQuery(
            "opencode_process_resident_memory_bytes", start=end - 600, end=end, max_points=4
        )
    )
    assert len(small) <= 4 + 2 and len(raw) > len(small)
    assert small["value"].max() == raw["value"].max()
    assert small["value"].min() == raw["value"].min()
    minutes = backend.query(
        MetricQuery(
            "opencode_process_threads", start=end - 120, end=end, resolution="1m", agg="max"
        )
    )
    assert not minutes.empty and (minutes["time"].diff().dropna() == pd.Timedelta(minutes=1)).all()
    cpu = backend.query(MetricQuery("opencode_process_cpu_percent", start=end - 120, end=end))
    assert not cpu.empty and (cpu["value"] >= 0).all()
    assert "opencode_server_status" in backend.metrics()


def _grafana(expr: str, interval: str = "5s") -> str:
    """A dashboard query as Grafana sends it (variables replaced)."""
    for var, value in (
        ("$__rate_interval", "1m"),
        ("$__range", "1h"),
        ("$__interval", interval),
        ("$instance", ".*"),
    ):
        expr = expr.replace(var, value)
    return expr


def _panel_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], _grafana(t["expr"])) for p in board["panels"] for t in p["targets"]]


def test_dashboard_queries_run_on_prometheus(stack) -> None:
    _, prom = stack
    for _, expr in _panel_queries():
        instant(prom.url, expr)  # raises on a bad query
    wait_for(lambda: instant(prom.url, 'opencode_server_status{job="nexus-ops"}'), timeout=60)


def _annotation_events(prom: PrometheusServer, expr: str, start: float, end: float) -> int:
    """How many annotations Grafana draws: points > 0, those a step apart merged."""
    step = 2.0
    params = {"query": _grafana(expr, "2s"), "start": start, "end": end, "step": step}
    body = httpx.get(f"{prom.url}/api/v1/query_range", params=params, timeout=10).json()
    assert body["status"] == "success", body
    events = 0
    for series in body["data"]["result"]:
        last = -math.inf
        for t, value in series["values"]:
            if float(value) > 0:
                events += float(t) > last + step
                last = float(t)
    return events


def _starts(prom: PrometheusServer) -> float:
    result = instant(prom.url, 'opencode_server_starts_total{job="nexus-ops"}')
    return float(result[0]["value"][1]) if result else -1.0  # type: ignore[index]


def test_dashboard_marks_each_start_and_shows_zero_while_down(stack) -> None:
    agent, prom = stack
    board = json.loads(DASHBOARD.read_text())
    (annotation,) = board["annotations"]["list"]
    wait_for(lambda: _starts(prom) >= 1, timeout=60, what="the first start scraped")
    before, began = _starts(prom), time.time()
    for _ in range(2):
        time.sleep(3)  # two starts further apart than the annotation's step
        assert agent.client.restart(wait=True).ok
    wait_for(lambda: _starts(prom) >= before + 2, timeout=60, what="both restarts scraped")
    time.sleep(3)
    assert _annotation_events(prom, annotation["expr"], began - 2, time.time()) == 2
    try:
        assert agent.client.stop().ok
        wait_for(
            lambda: instant(prom.url, 'opencode_server_status{job="nexus-ops"} == 0'),
            timeout=60,
            what="the server scraped down",
        )
        time.sleep(2)  # a scrape or two more: the server's series are stale
        # The agent's target stays up and tells the server's state (what the
        # Kubernetes readiness on the agent keeps scraping).
        assert instant(prom.url, 'up{job="nexus-ops"} == 1')
        assert instant(prom.url, 'opencode_server_state{job="nexus-ops", state="stopped"} == 1')
        empty = [title for title, expr in _panel_queries() if not instant(prom.url, expr)]
        assert not empty, f"panels with no data while the server is down: {empty}"
    finally:
        assert agent.client.start(wait=True).ok


def test_errors_of_the_prometheus_backend(stack) -> None:
    _, prom = stack
    with pytest.raises(QueryError, match="Prometheus refused the query"):
        PrometheusBackend(prom.url).query(MetricQuery('bad"metric', start=time.time() - 60))
    with pytest.raises(PrometheusUnavailable, match="did not answer"):
        PrometheusBackend("http://127.0.0.1:9", timeout=1).metrics()


def test_agent_answers_queries_from_prometheus_with_that_backend(
    tmp_path: Path, opencode_bin: Path
) -> None:
    """NEXUS_METRICS_BACKEND=prometheus: the agent's query API reads the Prometheus that
    scrapes it, and says so, clearly, when that Prometheus is gone."""
    env = private_env(tmp_path / "agent", {"NEXUS_OPENCODE_BIN": str(opencode_bin)})
    env.update(NEXUS_METRICS_INTERVAL="1", NEXUS_METRICS_BACKEND="prometheus")
    layout = Layout(Path(env["NEXUS_HOME"]))
    layout.ensure()
    read_or_create_secret(layout.agent_token_file)  # Prometheus scrapes with it from the start
    target = f"127.0.0.1:{env['NEXUS_AGENT_PORT']}"
    config = scrape_config(target, layout.agent_token_file)
    # Another target in the same Prometheus (down: its `up` is 0): not this agent's.
    other = {"job_name": "other", "static_configs": [{"targets": ["127.0.0.1:9"]}]}
    config["scrape_configs"].append(other)  # type: ignore[attr-defined]
    env["NEXUS_PROMETHEUS_LABELS"] = f"job=nexus-ops,instance={target}"
    try:
        with running_prometheus(tmp_path / "prometheus", config) as prom:
            env["NEXUS_PROMETHEUS_URL"] = prom.url
            agent = start_agent(env)
            assert agent.client.start(wait=True).ok
            # `up` is Prometheus' own series of the scrape: metrics.db never holds it.
            wait_for(
                lambda: not agent.client.query_metrics("up", start="5m").empty,
                timeout=60,
                what="the agent answering from Prometheus",
            )
            wait_for(lambda: instant(prom.url, 'up{job="other"}'), timeout=60)
            body = agent.client.json("GET", "/api/v1/metrics/query", params={"metric": "up"})
            assert body["backend"] == "prometheus" and body["resolution"] == "raw"
            # Only this agent's series (NEXUS_PROMETHEUS_LABELS), not the other target's.
            assert [s["values"][-1] for s in body["series"]] == [1.0]
            assert "up" in agent.client.metric_names()
            # Every series of the console's metrics tab, from Prometheus.
            wait_for(
                lambda: (
                    not [
                        m
                        for m in wanted_metrics()
                        if agent.client.query_metrics(m, start="5m").empty
                    ]
                ),
                timeout=90,
                what="every metric of the console from Prometheus",
            )
            # The console's request-duration panel: derived from the histogram.
            wait_for(
                lambda: (
                    not agent.client.query_metrics(
                        "opencode_request_duration_seconds", labels={"outcome": "ok"}, start="5m"
                    ).empty
                ),
                timeout=90,
                what="request durations from Prometheus",
            )
        with pytest.raises(AgentError) as gone:
            agent.client.query_metrics("up", start="5m")
        assert gone.value.status == 502
        assert "NEXUS_PROMETHEUS_URL" in gone.value.message
        assert "NEXUS_PROMETHEUS_URL" in (gone.value.hint or "")
        agent.client.close()
        agent.stop()
    finally:
        kill_everything_of(env)
