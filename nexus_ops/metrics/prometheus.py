"""The Prometheus backend: the same queries, answered by a Prometheus server (httpx).

Past one host, every agent's ``/metrics`` is scraped by Prometheus and the views
read from it instead of ``metrics.db``. A query becomes PromQL on Prometheus'
HTTP API:

- when a series has at most ``max_points`` samples in the range (or ``method``
  is ``none``), its raw scraped samples (a range selector);
- otherwise, for ``minmax``, ``min_over_time`` and ``max_over_time`` in
  ``max_points / 2`` steps (the same extremes per bucket the SQLite backend
  keeps); for ``lttb``, the raw samples, downsampled here;
- for the resolutions ``1m`` and ``1h``, ``<agg>_over_time`` per minute or hour.

Labels Prometheus adds (``job``, ``instance``) are dropped, so that a series
reads the same from both backends; ``labels`` (``NEXUS_PROMETHEUS_LABELS``)
are matched by every query, so that an agent reads only its own series from a
Prometheus that scrapes several. A few metrics the sample store keeps are
derived here from counters (:data:`DERIVED`).

>>> PrometheusBackend("http://127.0.0.1:9090").selector("m", {"state": "LISTEN"})
'm{state="LISTEN"}'
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from nexus_ops.errors import NexusOpsError
from nexus_ops.metrics import catalogue as m
from nexus_ops.metrics.backends import MetricQuery
from nexus_ops.metrics.frames import (
    Floats,
    Points,
    QueryError,
    downsample,
    frame_of,
    labels_text,
)
from nexus_ops.metrics.series import Series

if TYPE_CHECKING:
    import pandas as pd

# Metrics the sample store keeps that Prometheus computes from counters: the CPU
# percents, and the request durations (one sample per request in the store; the
# mean over a minute from the histogram here).
_DURATION = m.REQUEST_DURATION.metric
DERIVED: dict[str, str] = {
    m.PROCESS_CPU_PERCENT.metric: f"100 * rate({m.PROCESS_CPU_SECONDS.metric}{{sel}}[1m])",
    m.AGENT_CPU_PERCENT.metric: f"100 * rate({m.AGENT_CPU_SECONDS.metric}{{sel}}[1m])",
    _DURATION: f"rate({_DURATION}_sum{{sel}}[1m]) / rate({_DURATION}_count{{sel}}[1m])",
}
_STEPS = {"1m": 60.0, "1h": 3600.0}
_OVER_TIME = {"mean": "avg", "min": "min", "max": "max", "sum": "sum", "count": "count"}


class PrometheusUnavailable(NexusOpsError):
    """The Prometheus server did not answer, or answered with an error."""

    status = 502


class PrometheusBackend:
    """Reads metric history from a Prometheus server's HTTP API.

    >>> backend = PrometheusBackend("http://127.0.0.1:9090", timeout=5.0)
    >>> backend.name
    'prometheus'
    """

    name = "prometheus"

    def __init__(
        self,
        url: str,
        timeout: float = 10.0,
        drop_labels: Iterable[str] = ("job", "instance"),
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.labels = dict(labels or {})
        self.drop_labels = frozenset(drop_labels) | {"__name__"}
        self._clock = clock
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    # -- the Protocol ------------------------------------------------------------

    def metrics(self) -> list[str]:
        params = {"match[]": self.selector("", self.labels)} if self.labels else None
        return [str(name) for name in self._get("/api/v1/label/__name__/values", params)]

    def resolution(self, query: MetricQuery) -> str:
        """``1m``/``1h`` when asked for; else the scraped samples (``raw``)."""
        return query.resolution if query.resolution in _STEPS else "raw"

    def query(self, query: MetricQuery) -> pd.DataFrame:
        return frame_of(self.read(query))

    def read_series(self, query: MetricQuery) -> list[Series]:
        return [
            Series(p.metric, p.labels, p.times.tolist(), p.values.tolist())
            for p in self.read(query)
        ]

    def read(self, query: MetricQuery) -> list[Points]:
        end = min(query.end, self._clock())
        start = max(query.start, 0.0)
        expr = self.expression(query.metric, {**self.labels, **query.labels})
        if query.metric in DERIVED:
            step = max(1.0, (end - start) / query.max_points)
            return self._limit(self._range(expr, start, end, step), query)
        if query.resolution in _STEPS:
            step = _STEPS[query.resolution]
            over = f"{_OVER_TIME[query.agg]}_over_time({expr}[{_ms(step)}])"
            return self._limit(self._range(over, start, end, step), query)
        counts = self._instant(f"count_over_time({expr}[{_ms(end - start + 0.001)}])", end)
        most = max((float(values[0]) for _, _, values in counts), default=0.0)
        if most <= query.max_points or query.method != "minmax":
            return self._limit(self.raw(expr, start, end), query)
        return self._minmax(expr, start, end, query)

    # -- PromQL --------------------------------------------------------------------

    def selector(self, metric: str, labels: Mapping[str, str]) -> str:
        """``metric{name="value",...}`` with the values escaped."""
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        return f"{metric}{{{inner}}}" if inner else metric

    def expression(self, metric: str, labels: Mapping[str, str]) -> str:
        """The PromQL of a metric: its selector, or its derivation (:data:`DERIVED`)."""
        if metric in DERIVED:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            return DERIVED[metric].replace("{sel}", f"{{{inner}}}" if inner else "")
        return self.selector(metric, labels)

    def raw(self, expr: str, start: float, end: float) -> list[tuple[str, Floats, Floats]]:
        """Scraped samples in ``[start, end]`` as (labels text, times, values) per series."""
        return self._instant(f"{expr}[{_ms(end - start + 0.001)}]", end)

    def _minmax(self, expr: str, start: float, end: float, query: MetricQuery) -> list[Points]:
        buckets = max(1, query.max_points // 2)
        step = max(0.001, (end - start) / buckets)
        window = _ms(step)
        lows = self._range(f"min_over_time({expr}[{window}])", start + step, end, step)
        highs = self._range(f"max_over_time({expr}[{window}])", start + step, end, step)
        merged: dict[str, tuple[list[Floats], list[Floats]]] = {}
        for labels, times, values in [*lows, *highs]:
            bucket = merged.setdefault(labels, ([], []))
            bucket[0].append(times)
            bucket[1].append(values)
        found = []
        for labels, (time_parts, value_parts) in sorted(merged.items()):
            t, v = np.concatenate(time_parts), np.concatenate(value_parts)
            order = np.argsort(t, kind="stable")
            found.append(Points(query.metric, labels, t[order], v[order]))
        return found

    def _limit(self, series: list[tuple[str, Floats, Floats]], query: MetricQuery) -> list[Points]:
        found = []
        for labels, times, values in sorted(series, key=lambda s: s[0]):
            keep = downsample(times, values, query.max_points, query.method)
            found.append(Points(query.metric, labels, times[keep], values[keep]))
        return found

    # -- HTTP ----------------------------------------------------------------------

    def _instant(self, expr: str, at: float) -> list[tuple[str, Floats, Floats]]:
        data = self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        return self._series(data)

    def _range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[tuple[str, Floats, Floats]]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"}
        return self._series(self._get("/api/v1/query_range", params))

    def _series(self, data: Any) -> list[tuple[str, Floats, Floats]]:
        kind, result = data.get("resultType"), data.get("result", [])
        out = []
        for item in result:
            labels = {k: v for k, v in item["metric"].items() if k not in self.drop_labels}
            pairs = item["values"] if kind == "matrix" else [item["value"]]
            times = np.fromiter((float(p[0]) for p in pairs), dtype=np.float64, count=len(pairs))
            values = np.fromiter((float(p[1]) for p in pairs), dtype=np.float64, count=len(pairs))
            out.append((labels_text(labels), times, values))
        return out

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} (NEXUS_PROMETHEUS_URL) did not answer {path}:"
                f" {type(exc).__name__}",
                hint="check NEXUS_PROMETHEUS_URL and that Prometheus is running",
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 400 or body.get("errorType") == "bad_data":
            raise QueryError(f"Prometheus refused the query: {body.get('error', response.text)}")
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} answered {path} with HTTP {response.status_code}: "
                f"{body.get('error', '')}".rstrip(": "),
                hint="see Prometheus' own log",
            )
        return body["data"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _ms(seconds: float) -> str:
    """A PromQL duration in whole milliseconds (at least 1 ms)."""
    if not math.isfinite(seconds):
        raise QueryError("the time range is unbounded", hint="give a start and an end")
    return f"{max(1, round(seconds * 1000))}ms"
