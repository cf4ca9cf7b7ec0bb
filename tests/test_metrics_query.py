"""Queries to tidy frames: resolution, label matching, downsampling that keeps extremes."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from nexus_ops.config import load_settings
from nexus_ops.errors import ConfigError
from nexus_ops.metrics.backends import (
    MetricQuery,
    MetricsBackend,
    SQLiteBackend,
    backend_from_settings,
)
from nexus_ops.metrics.frames import (
    COLUMNS,
    QueryError,
    bucket_of,
    downsample,
    minmax_indices,
    parse_labels,
    parse_time,
)
from nexus_ops.metrics.prometheus import PrometheusBackend
from nexus_ops.metrics.series import minmax_positions
from nexus_ops.store.samples import Retention, SampleStore

T0 = 1_800_000_000.0
DAY = 86400.0


@pytest.fixture
def backend(tmp_path) -> SQLiteBackend:
    now = T0 + 3 * DAY
    store = SampleStore(tmp_path / "metrics.db", Retention(raw=DAY), clock=lambda: now)
    rng = np.random.default_rng(3)
    times = T0 + np.arange(0.0, 3 * DAY, 5.0)
    for state, scale in (("LISTEN", 0.0), ("CLOSE_WAIT", 10.0)):
        values = np.round(np.abs(rng.normal(size=len(times)) * scale))
        store.append_many("opencode_connections", {"state": state}, times, values)
    spiky = rng.normal(size=len(times))
    spiky[rng.integers(0, len(times), 40)] *= 50  # spikes that must not vanish
    store.append_many("spiky", {}, times, spiky)
    store.flush()
    return SQLiteBackend(store, clock=lambda: now)


def test_frame_has_the_tidy_shape(backend: SQLiteBackend) -> None:
    frame = backend.query(
        MetricQuery("opencode_connections", start=T0 + 2.5 * DAY, end=T0 + 3 * DAY)
    )
    assert list(frame.columns) == COLUMNS
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]"
    assert sorted(frame["labels"].unique()) == ["state=CLOSE_WAIT", "state=LISTEN"]
    assert frame.groupby("labels").size().max() <= 2000


def test_labels_select_series(backend: SQLiteBackend) -> None:
    query = MetricQuery("opencode_connections", {"state": "LISTEN"}, start=T0 + 2.9 * DAY)
    frame = backend.query(query)
    assert set(frame["labels"]) == {"state=LISTEN"}
    assert (frame["value"] == 0).all()
    assert backend.query(MetricQuery("no_such_metric", start=T0)).empty


def test_resolution_is_picked_by_what_each_tier_still_holds(backend: SQLiteBackend) -> None:
    now = T0 + 3 * DAY
    assert backend.pick_tier(MetricQuery("spiky", start=now - 3600)).name == "raw"
    assert backend.pick_tier(MetricQuery("spiky", start=now - 2 * DAY)).name == "1m"
    assert backend.pick_tier(MetricQuery("spiky", start=now - 60 * DAY)).name == "1h"
    week = backend.query(MetricQuery("spiky", start=now - 2 * DAY, end=now, max_points=100_000))
    steps = week["time"].diff().dropna().unique()
    assert list(steps) == [pd.Timedelta(minutes=1)]


def test_minmax_downsampling_keeps_every_buckets_true_extremes(backend: SQLiteBackend) -> None:
    now = T0 + 3 * DAY
    start = now - DAY + 1
    query = MetricQuery("spiky", start=start, end=now, max_points=500, resolution="raw")
    frame = backend.query(query)
    assert len(frame) <= 500
    sid = backend.store.series("spiky")[0].id
    times, values = map(np.asarray, backend.store.read_raw(sid, start, now))
    buckets = bucket_of(times, 250)
    millis = frame["time"].astype("int64") // 1_000_000
    kept = dict(zip(millis, frame["value"], strict=True))
    for b in range(250):
        inside = buckets == b
        lo, hi = np.argmin(values[inside]), np.argmax(values[inside])
        for index in (lo, hi):
            t = round(float(times[inside][index]) * 1000)
            assert kept[t] == values[inside][index]
    assert frame["value"].max() == values.max() and frame["value"].min() == values.min()


def test_rollup_aggregates_keep_extremes_of_the_raw_data(backend: SQLiteBackend) -> None:
    now = T0 + 3 * DAY
    query = MetricQuery("spiky", start=T0, end=now, resolution="1h", agg="max", method="none")
    hourly_max = backend.query(query)
    assert len(hourly_max) == 72
    sid = backend.store.series("spiky")[0].id
    raw = backend.store.read_raw(sid, now - DAY, now)  # raw still holds the last day
    times, values = map(np.asarray, raw)
    last = pd.Series(values, index=times).groupby(np.floor(times / 3600) * 3600).max()
    assert hourly_max["value"].tolist()[-24:] == last.tolist()


def test_lttb_and_none_methods() -> None:
    times = np.arange(10_000, dtype=float)
    values = np.sin(times / 100)
    assert len(downsample(times, values, 300, "lttb")) == 300
    assert len(downsample(times, values, 300, "none")) == 10_000
    with pytest.raises(QueryError, match="method='m4' is not a downsampling method"):
        downsample(times, values, 300, "m4")


def test_bad_queries_say_what_to_do() -> None:
    with pytest.raises(QueryError, match="before start"):
        MetricQuery("m", start=10, end=5)
    with pytest.raises(QueryError, match="resolution='5m'"):
        MetricQuery("m", resolution="5m")  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="'state' is not name=value"):
        parse_labels("state")
    with pytest.raises(QueryError, match="is not a time"):
        parse_time("yesterday-ish", now=0.0, field="start")


def test_times_in_every_usual_form() -> None:
    now = 1_000_000.0
    assert parse_time("24h", now) == now - DAY
    assert parse_time("-15m", now) == now - 900
    assert parse_time("now", now) == now
    assert parse_time(12.5, now) == 12.5
    assert (
        parse_time("2026-11-28T10:00:00Z", now)
        == datetime(2026, 11, 28, 10, tzinfo=UTC).timestamp()
    )
    assert parse_labels("state=CLOSE_WAIT, path=/session") == {
        "state": "CLOSE_WAIT",
        "path": "/session",
    }


def test_backend_is_picked_by_settings(tmp_path) -> None:
    sqlite = backend_from_settings(load_settings({"NEXUS_HOME": str(tmp_path)}, tmp_path))
    assert isinstance(sqlite, MetricsBackend) and sqlite.name == "sqlite"
    env = {"NEXUS_HOME": str(tmp_path), "NEXUS_METRICS_BACKEND": "prometheus"}
    with pytest.raises(ConfigError, match="needs NEXUS_PROMETHEUS_URL"):
        backend_from_settings(load_settings(env, tmp_path))
    env["NEXUS_PROMETHEUS_URL"] = "http://127.0.0.1:9"
    prom = backend_from_settings(load_settings(env, tmp_path))
    assert isinstance(prom, PrometheusBackend) and isinstance(prom, MetricsBackend)
    assert prom.labels == {}
    env["NEXUS_PROMETHEUS_LABELS"] = "job=nexus-ops, instance=ops-1:1420"
    prom = backend_from_settings(load_settings(env, tmp_path))
    assert isinstance(prom, PrometheusBackend)
    assert prom.labels == {"job": "nexus-ops", "instance": "ops-1:1420"}
    env["NEXUS_PROMETHEUS_LABELS"] = "instance"
    with pytest.raises(
        ConfigError, match=r"NEXUS_PROMETHEUS_LABELS: .*'instance' is not name=value"
    ):
        backend_from_settings(load_settings(env, tmp_path))


@pytest.mark.parametrize(("max_points", "tier", "step"), [(2000, "1m", 60.0), (500, "1h", 3600.0)])
def test_a_long_range_answers_from_rollups_with_the_raw_datas_means(
    tmp_path, max_points: int, tier: str, step: float
) -> None:
    now = T0 + 29 * DAY
    store = SampleStore(tmp_path / "metrics.db", Retention(raw=40 * DAY), clock=lambda: now)
    times = T0 + np.arange(0.0, 29 * DAY, 30.0)
    values = np.round(np.random.default_rng(5).normal(size=len(times)) * 100)
    store.append_many("m", {}, times, values)
    backend = SQLiteBackend(store, clock=lambda: now)
    query = MetricQuery("m", start=T0, end=now, max_points=max_points, method="none")
    assert backend.resolution(query) == tier  # raw still holds the start, but is too fine
    frame = backend.query(query)
    expected = pd.Series(values).groupby(np.floor(times / step) * step).mean()
    assert len(frame) == len(expected)
    assert (frame["time"].astype("int64") / 1e9).tolist() == expected.index.tolist()
    assert np.allclose(frame["value"], expected.to_numpy())


@pytest.mark.parametrize("seed", range(5))
def test_the_agents_minmax_keeps_what_the_arrays_one_keeps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5000))
    times = np.sort(rng.uniform(0, 1e5, n)) if seed else np.full(n, 7.0)  # 0: no span
    values = rng.integers(0, 5, n).astype(float)  # many ties: the first one is kept
    buckets = int(rng.integers(1, 400))
    expected = minmax_indices(times, values, buckets).tolist()
    assert minmax_positions(times.tolist(), values.tolist(), buckets) == expected
