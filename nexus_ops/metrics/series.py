"""Metric series without numpy or pandas: what the agent answers queries with.

The query side of the agent (parsing a query's times and labels, downsampling the
points of a series, the JSON answer) lives here, on plain sequences of floats, so
that the agent never loads numpy or pandas; :mod:`nexus_ops.metrics.frames` makes
arrays and frames of the answers where someone wants them.

``minmax`` downsampling splits a series' time range into ``max_points / 2`` equal
buckets and keeps the first minimum and the first maximum of each, so every
bucket's true minimum and maximum survive (a spike is never lost).

>>> minmax_positions([0.0, 1.0, 2.0, 3.0], [5.0, 9.0, 1.0, 5.0], buckets=1)
[1, 2]
>>> parse_time("90s", now=1000.0)
910.0
"""

from __future__ import annotations

import math
import numbers
import re
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from nexus_ops.errors import NexusOpsError

if TYPE_CHECKING:
    from nexus_ops.metrics.frames import Points

COLUMNS = ["time", "metric", "labels", "value"]
Method = Literal["minmax", "lttb", "none"]
METHODS: tuple[str, ...] = ("minmax", "lttb", "none")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class QueryError(NexusOpsError):
    """A metric query was malformed (bad time, method, resolution or labels)."""

    status = 400  # the agent answers it as a bad request


@dataclass(frozen=True)
class Series:
    """The points of one series as plain sequences: metric, labels text, times, values."""

    metric: str
    labels: str
    times: Sequence[float]
    values: Sequence[float]

    def __len__(self) -> int:
        return len(self.times)


def labels_text(labels: Mapping[str, str]) -> str:
    """``{"a": "1", "b": "2"}`` -> ``'a=1,b=2'`` (sorted by name)."""
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def parse_labels(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``'a=1,b=2'`` (or a mapping) -> ``{"a": "1", "b": "2"}``."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return {str(k): str(v) for k, v in text.items()}
    labels = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise QueryError(
                f"labels={text!r}: {part!r} is not name=value",
                hint="write labels as name=value pairs separated by commas, e.g. state=LISTEN",
            )
        labels[name.strip()] = value.strip().strip('"')
    return labels


def parse_duration(text: str) -> float:
    """``'90s'``, ``'15m'``, ``'2h'``, ``'7d'``, ``'1w'`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise QueryError(
            f"{text!r} is not a duration",
            hint="write a number and a unit: ms, s, m, h, d or w (e.g. 15m, 24h, 7d)",
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_time(value: object, now: float, field: str = "time") -> float:
    """A point in time as epoch seconds.

    Accepts epoch seconds, ``datetime``/``Timestamp`` (naive means UTC), ISO 8601
    text, ``'now'`` and durations before now (``'24h'`` or ``'-24h'``).
    """
    if isinstance(value, bool):
        raise QueryError(f"{field}={value!r} is not a time")
    if isinstance(value, numbers.Real):  # numpy's numbers too
        return _finite(float(value), value, field)
    if isinstance(value, timedelta):
        return now - value.total_seconds()
    if isinstance(value, datetime):  # pandas' Timestamp is one too
        return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).timestamp()
    if isinstance(value, str):
        return _parse_time_text(value.strip(), now, field)
    raise QueryError(f"{field}={value!r} is not a time")


def _finite(seconds: float, given: object, field: str) -> float:
    if not math.isfinite(seconds):
        raise QueryError(
            f"{field}={given!r} is not a point in time",
            hint="give finite epoch seconds, ISO 8601 (2026-11-28T10:00:00Z), 'now', or a "
            "duration before now such as 24h",
        )
    return seconds


def _parse_time_text(text: str, now: float, field: str) -> float:
    if text == "now":
        return now
    try:
        return _finite(float(text), text, field)
    except ValueError:
        pass
    if _DURATION.match(text.lstrip("-")):
        return now - parse_duration(text.lstrip("-"))
    try:
        return parse_time(datetime.fromisoformat(text), now, field)
    except ValueError as exc:
        raise QueryError(
            f"{field}={text!r} is not a time",
            hint="give epoch seconds, ISO 8601 (2026-11-28T10:00:00Z), 'now', or a duration "
            "before now such as 24h",
        ) from exc


def check_method(method: str) -> None:
    if method not in METHODS:
        raise QueryError(
            f"method={method!r} is not a downsampling method",
            hint=f"use one of {', '.join(METHODS)}",
        )


def positions(
    times: Sequence[float], values: Sequence[float], max_points: int, method: str
) -> Sequence[int]:
    """Positions (sorted) of the points to keep: at most ``max_points`` of them.

    ``lttb`` (MinMaxLTTB of tsdownsample) needs numpy, which it loads: only a query
    that asks for it pays for it."""
    check_method(method)
    n = len(times)
    if method == "none" or n <= max_points:
        return range(n)
    if method == "lttb":
        import numpy as np

        from nexus_ops.metrics.frames import downsample

        picked = downsample(np.asarray(times), np.asarray(values), max_points, method)
        return [int(i) for i in picked]
    return minmax_positions(times, values, max(1, max_points // 2))


def minmax_positions(times: Sequence[float], values: Sequence[float], buckets: int) -> list[int]:
    """First minimum and first maximum of each equal-time bucket, as sorted positions.

    The times are sorted: each bucket's end is found by bisection, and its extremes by
    ``min`` and ``max`` over its slice, so that the loop runs per bucket, not per point.
    """
    n = len(times)
    if not n:
        return []
    first = times[0]
    span = times[-1] - first
    scale = buckets / span if span > 0 else 0.0
    top = buckets - 1

    def bucket_of(t: float) -> int:
        return min(int((t - first) * scale), top)

    picked: list[int] = []
    lo = 0
    while lo < n:
        hi = bisect_left(times, bucket_of(times[lo]) + 1, lo, key=bucket_of)
        part = values[lo:hi]
        low, high = lo + part.index(min(part)), lo + part.index(max(part))
        picked += (low,) if low == high else (low, high) if low < high else (high, low)
        lo = hi
    return picked


def kept(series: Series, keep: Sequence[int]) -> Series:
    """``series`` with only the points at ``keep``."""
    if len(keep) == len(series):
        return series
    times, values = series.times, series.values
    return Series(series.metric, series.labels, [times[i] for i in keep], [values[i] for i in keep])


def points_to_payload(points: Sequence[Series | Points]) -> dict[str, object]:
    """Series' points as JSON-ready columns, sorted by labels (epoch seconds; NaN as null)."""
    series = [
        {
            "metric": p.metric,
            "labels": p.labels,
            "times": [round(float(t), 3) for t in p.times],
            "values": [v if math.isfinite(v) else None for v in map(float, p.values)],
        }
        for p in sorted(points, key=lambda p: (p.metric, p.labels))
        if len(p)
    ]
    return {"columns": COLUMNS, "series": series}
