"""Where metric history is read from: one Protocol, two backends, picked by settings.

:class:`MetricsBackend` is what the notebooks, the console and the agent's API
ask; :class:`SQLiteBackend` reads the embedded sample store and
:class:`~nexus_ops.metrics.prometheus.PrometheusBackend` a Prometheus server.
:data:`BACKENDS` maps the ``NEXUS_METRICS_BACKEND`` setting to a factory, so
that another backend is one entry more.

>>> from pathlib import Path
>>> from nexus_ops.store.samples import SampleStore
>>> backend = SQLiteBackend(SampleStore(Path(":memory:")))
>>> backend.store.append("opencode_server_status", {}, 100.0, 1.0)
True
>>> backend.query(MetricQuery("opencode_server_status", start=0, end=200))["value"].tolist()
[1.0]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from nexus_ops.errors import ConfigError
from nexus_ops.metrics import catalogue as m
from nexus_ops.metrics.series import (
    QueryError,
    Series,
    check_method,
    kept,
    labels_text,
    parse_labels,
    positions,
)
from nexus_ops.metrics.storefile import open_store
from nexus_ops.store.codec import Floats, floats
from nexus_ops.store.samples import RAW, SampleStore, Tier

if TYPE_CHECKING:
    import pandas as pd

    from nexus_ops.config import Settings
    from nexus_ops.metrics.frames import Points

Resolution = Literal["auto", "raw", "1m", "1h"]
RESOLUTIONS: tuple[str, ...] = ("auto", "raw", "1m", "1h")
Agg = Literal["mean", "min", "max", "sum", "count"]
AGGS: tuple[str, ...] = ("mean", "min", "max", "sum", "count")
STEPS: dict[str, float] = {"raw": 0.0, "1m": 60.0, "1h": 3600.0}


@dataclass(frozen=True)
class MetricQuery:
    """What to read: a metric, labels that must match, a time range (epoch seconds).

    ``resolution`` picks the tier (``auto``: of those that still hold ``start``,
    the coarsest that still gives ``max_points`` buckets over the range); ``agg`` picks what a rollup point shows (raw points are
    themselves); ``max_points`` caps the points per series after downsampling
    with ``method``.

    >>> MetricQuery("opencode_connections", {"state": "CLOSE_WAIT"}, start=0, end=60).resolution
    'auto'
    """

    metric: str
    labels: Mapping[str, str] = field(default_factory=dict)
    start: float = 0.0
    end: float = math.inf
    max_points: int = 2000
    resolution: Resolution = "auto"
    method: str = "minmax"
    agg: Agg = "mean"

    def __post_init__(self) -> None:
        if not self.metric:
            raise QueryError(
                "metric is empty", hint=f"name a metric, e.g. {m.SERVER_STATUS.metric}"
            )
        if self.end < self.start:
            raise QueryError(
                f"end ({self.end}) is before start ({self.start})",
                hint="give a start earlier than the end",
            )
        if self.max_points < 2:
            raise QueryError(f"max_points={self.max_points} is too small", hint="use 2 or more")
        if self.resolution not in RESOLUTIONS:
            raise QueryError(
                f"resolution={self.resolution!r} is not a resolution",
                hint=f"use one of {', '.join(RESOLUTIONS)}",
            )
        if self.agg not in AGGS:
            raise QueryError(
                f"agg={self.agg!r} is not an aggregate", hint=f"use one of {', '.join(AGGS)}"
            )
        check_method(self.method)


def newer_than(query: MetricQuery, since: float, resolution: str) -> MetricQuery:
    """``query`` cut to what is new after ``since`` at ``resolution`` (the one the
    whole range is read at): raw points after it, or rollup buckets from the one
    holding it on.

    >>> newer_than(MetricQuery("m", start=0, end=500), 130.0, "1m").start
    120.0
    """
    step = STEPS[resolution]
    cut = math.floor(since / step) * step if step else math.nextafter(since, math.inf)
    return replace(query, start=min(max(query.start, cut), query.end), resolution=resolution)  # type: ignore[arg-type]


@runtime_checkable
class MetricsBackend(Protocol):
    """Reads metric history: as :class:`Points` per series (``read``, what the agent
    answers, without pandas) or as a tidy DataFrame (``query``: time, metric,
    labels, value)."""

    name: str

    def read(self, query: MetricQuery) -> list[Points]:
        """Points of every series of ``query.metric`` whose labels match, by labels."""
        ...

    def read_series(self, query: MetricQuery) -> list[Series]:
        """What ``read`` gives, as plain sequences (what the agent answers, without numpy)."""
        ...

    def query(self, query: MetricQuery) -> pd.DataFrame:
        """What ``read`` gives, as one tidy frame."""
        ...

    def metrics(self) -> list[str]:
        """Names of the metrics the backend holds."""
        ...

    def resolution(self, query: MetricQuery) -> str:
        """The resolution ``query`` is answered at (``raw``, ``1m`` or ``1h``)."""
        ...

    def close(self) -> None:
        """Let go of what the backend holds open."""
        ...


class SQLiteBackend:
    """The embedded sample store as a backend.

    ``clock`` is "now" for picking the resolution (which tiers still hold ``start``).
    """

    name = "sqlite"

    def __init__(self, store: SampleStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock

    def metrics(self) -> list[str]:
        return self.store.metrics()

    def resolution(self, query: MetricQuery) -> str:
        return self.pick_tier(query).name

    def close(self) -> None:
        """Nothing: the store belongs to whoever opened it."""

    def pick_tier(self, query: MetricQuery) -> Tier:
        """The tier a query reads: asked for, or, of the tiers that still hold its start,
        the coarsest whose buckets over the range still number ``max_points`` (else
        the finest of them), so that a long range reads rollups, not every raw sample."""
        tiers = self.store.tiers
        if query.resolution != "auto":
            return next(t for t in tiers if t.name == query.resolution)
        now = self._clock()
        holding = [t for t in tiers if query.start >= now - t.retention] or [tiers[-1]]
        span = min(query.end, now) - query.start
        enough = [t for t in holding if t.step and span / t.step >= query.max_points]
        return enough[-1] if enough else holding[0]

    def query(self, query: MetricQuery) -> pd.DataFrame:
        from nexus_ops.metrics.frames import frame_of

        return frame_of(self.read(query))

    def read(self, query: MetricQuery) -> list[Points]:
        from nexus_ops.metrics.frames import points_of

        return points_of(self.read_series(query))

    def read_series(self, query: MetricQuery) -> list[Series]:
        tier = self.pick_tier(query)
        found = []
        for series in self.store.series(query.metric, query.labels):
            times, values = self._read(series.id, tier, query)
            whole = Series(series.metric, labels_text(series.labels), times, values)
            found.append(kept(whole, positions(times, values, query.max_points, query.method)))
        return found

    def _read(self, sid: int, tier: Tier, query: MetricQuery) -> tuple[Floats, Floats]:
        if tier.index == RAW:
            return self.store.read_raw(sid, query.start, query.end)
        rollup = self.store.read_rollup(sid, tier.index, query.start, query.end)
        column = {
            "mean": rollup.means,
            "min": rollup.mins,
            "max": rollup.maxs,
            "sum": rollup.sums,
            "count": floats(rollup.counts),
        }[query.agg]
        return rollup.times, column


BackendFactory = Callable[["Settings", SampleStore | None, Callable[[], float]], MetricsBackend]


def _sqlite_from_settings(
    settings: Settings, store: SampleStore | None, clock: Callable[[], float]
) -> MetricsBackend:
    return SQLiteBackend(store or open_store(settings), clock=clock)


def _prometheus_from_settings(
    settings: Settings, store: SampleStore | None, clock: Callable[[], float]
) -> MetricsBackend:
    from nexus_ops.metrics.prometheus import PrometheusBackend

    if not settings.prometheus_url:
        raise ConfigError(
            "NEXUS_METRICS_BACKEND=prometheus needs NEXUS_PROMETHEUS_URL",
            hint="set NEXUS_PROMETHEUS_URL to the Prometheus server, e.g. http://127.0.0.1:9090",
        )
    try:
        labels = parse_labels(settings.prometheus_labels)
    except QueryError as exc:
        raise ConfigError(f"NEXUS_PROMETHEUS_LABELS: {exc.message}", hint=exc.hint) from exc
    return PrometheusBackend(
        settings.prometheus_url, timeout=settings.prometheus_timeout, labels=labels, clock=clock
    )


BACKENDS: dict[str, BackendFactory] = {
    "sqlite": _sqlite_from_settings,
    "prometheus": _prometheus_from_settings,
}


def backend_from_settings(
    settings: Settings, store: SampleStore | None = None, clock: Callable[[], float] = time.time
) -> MetricsBackend:
    """The backend ``NEXUS_METRICS_BACKEND`` names (``sqlite`` or ``prometheus``).

    ``store``: the sample store the ``sqlite`` backend reads (else it opens
    metrics.db itself); ``clock``: "now" for the backend.
    """
    factory = BACKENDS.get(settings.metrics_backend)
    if factory is None:
        raise ConfigError(
            f"NEXUS_METRICS_BACKEND={settings.metrics_backend!r} is not a metrics backend",
            hint=f"use one of {', '.join(BACKENDS)}",
        )
    return factory(settings, store, clock)
