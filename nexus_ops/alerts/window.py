"""The recent samples the alert rules look at, kept in memory for the longest window.

Two kinds of series feed it: those of the sampler's readings (gauges and
counters, one point per reading), and observed ones (the duration of every
request the agent makes to the server). A reading's series is *current* while
the latest reading holds it; an observed series while it has a point within the
rule's window (a reading older than ``stale_after`` seconds holds no current
series: the sampler has stalled). A rule's value is computed from the matching
series:

* ``last``: the worst current value (the highest for ``>``/``>=``, else the lowest);
* ``min``/``max``/``mean``/``pNN``: over every point of the window;
* ``increase``: the counters' growth over the window (a reset counts from zero).

>>> window = SeriesWindow(keep=60)
>>> window.add_reading(100.0, [("opencode_server_status", {}, 1.0)])
>>> window.value("opencode_server_status", {}, "last", 60, ">", now=101.0)
1.0
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping

Key = tuple[str, frozenset[tuple[str, str]]]
Point = tuple[float, float]
_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


class SeriesWindow:
    """Points of every series seen within the last ``keep`` seconds."""

    def __init__(self, keep: float, stale_after: float = 15.0) -> None:
        self.keep = keep
        self.stale_after = stale_after
        self.latest_reading: float | None = None
        self._points: dict[Key, deque[Point]] = {}
        self._current: set[Key] = set()
        self._observed: set[Key] = set()

    def add_reading(
        self, when: float, values: Iterable[tuple[str, Mapping[str, str], float]]
    ) -> None:
        """One reading of the sampler: its series become the current ones."""
        current: set[Key] = set()
        for metric, labels, value in values:
            if math.isfinite(value):
                key = (metric, frozenset(labels.items()))
                self._points.setdefault(key, deque()).append((when, value))
                current.add(key)
        self._current = current
        self.latest_reading = when
        self._expire(when)

    def observe(self, metric: str, labels: Mapping[str, str], when: float, value: float) -> None:
        """One observation of an observed series (a request's duration)."""
        if math.isfinite(value):
            key = (metric, frozenset(labels.items()))
            self._observed.add(key)
            self._points.setdefault(key, deque()).append((when, value))

    def _expire(self, now: float) -> None:
        horizon = now - self.keep
        for key in list(self._points):
            points = self._points[key]
            while points and points[0][0] < horizon:
                points.popleft()
            if not points:
                del self._points[key]
                self._observed.discard(key)

    def matching(self, metric: str, match: Mapping[str, str]) -> list[Key]:
        wanted = set(match.items())
        return [key for key in self._points if key[0] == metric and wanted <= key[1]]

    def seen(self, metric: str, match: Mapping[str, str], window: float, now: float) -> bool:
        """Whether any matching series has a point within the last ``window`` seconds."""
        self._expire(now)
        since = now - window
        return any(self._points[key][-1][0] >= since for key in self.matching(metric, match))

    def _is_current(self, key: Key, window: float, now: float) -> bool:
        if key in self._observed:
            return self._points[key][-1][0] >= now - window
        fresh = self.latest_reading is not None and self.latest_reading >= now - self.stale_after
        return fresh and key in self._current

    def value(
        self,
        metric: str,
        match: Mapping[str, str],
        aggregate: str,
        window: float,
        op: str,
        now: float,
    ) -> float | None:
        """The rule's value from the matching series, or None when there is no data."""
        self._expire(now)
        keys = self.matching(metric, match)
        if aggregate == "last":
            lasts = [self._points[k][-1][1] for k in keys if self._is_current(k, window, now)]
            if not lasts:
                return None
            return max(lasts) if op.startswith(">") else min(lasts)
        since = now - window
        if aggregate == "increase":
            grown = [increase([p for p in self._points[k] if p[0] >= since]) for k in keys]
            return sum(grown) if keys else None
        values = [v for k in keys for t, v in self._points[k] if t >= since]
        return aggregate_values(values, aggregate)


def increase(points: list[Point]) -> float:
    """A counter's growth over the points, counting a reset (a drop) as a restart from 0."""
    total = 0.0
    for (_, before), (_, after) in itertools.pairwise(points):
        total += after - before if after >= before else after
    return total


def aggregate_values(values: list[float], aggregate: str) -> float | None:
    """min, max, mean or a percentile (nearest rank) of the values; None when empty."""
    if not values:
        return None
    if aggregate == "min":
        return min(values)
    if aggregate == "max":
        return max(values)
    if aggregate == "mean":
        return sum(values) / len(values)
    quantile = _QUANTILES[aggregate]
    ordered = sorted(values)
    rank = max(1, math.ceil(quantile * len(ordered)))
    return ordered[rank - 1]
