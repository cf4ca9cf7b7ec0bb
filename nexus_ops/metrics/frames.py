"""The one tidy shape of metric data, and how to shrink it for a screen.

Every query answers a pandas DataFrame with the columns ``time`` (UTC,
tz-aware), ``metric``, ``labels`` (canonical text such as
``state=CLOSE_WAIT``; empty when the series has none) and ``value``, one row
per point, sorted by series and time. Backends read :class:`Points` (plain
arrays, one series each), which the agent sends as JSON without loading pandas;
:func:`frame_of` makes the frame where someone wants one (notebooks, the
console, the client).

Downsampling keeps the shape of a series in at most ``max_points`` points:

- ``minmax`` splits the series' time range into ``max_points / 2`` equal
  buckets and keeps the first minimum and the first maximum of each, so every
  bucket's true minimum and maximum survive (a spike is never lost);
- ``lttb`` uses MinMaxLTTB (tsdownsample): visually faithful, one point a bucket;
- ``none`` keeps every point.

>>> frame = tidy_frame("m", "", np.array([0.0, 1.0]), np.array([2.0, 3.0]))
>>> list(frame.columns), frame["value"].tolist()
(['time', 'metric', 'labels', 'value'], [2.0, 3.0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

# The numpy-free half of the metric series (the agent's), here too for the callers of
# this module.
from nexus_ops.metrics.series import (
    COLUMNS as COLUMNS,
)
from nexus_ops.metrics.series import (
    METHODS as METHODS,
)
from nexus_ops.metrics.series import (
    Method as Method,
)
from nexus_ops.metrics.series import (
    QueryError as QueryError,
)
from nexus_ops.metrics.series import Series
from nexus_ops.metrics.series import (
    check_method as check_method,
)
from nexus_ops.metrics.series import (
    labels_text as labels_text,
)
from nexus_ops.metrics.series import (
    parse_duration as parse_duration,
)
from nexus_ops.metrics.series import (
    parse_labels as parse_labels,
)
from nexus_ops.metrics.series import (
    parse_time as parse_time,
)
from nexus_ops.metrics.series import (
    points_to_payload as points_to_payload,
)

if TYPE_CHECKING:  # pandas loads where a frame is made, never in the agent's queries
    import pandas as pd

Floats = npt.NDArray[np.float64]
Indices = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Points:
    """The points of one series: metric, labels text (``state=LISTEN``), times, values.

    >>> Points("m", "", np.array([1.0]), np.array([2.0])).values.tolist()
    [2.0]
    """

    metric: str
    labels: str
    times: Floats
    values: Floats

    def __len__(self) -> int:
        return len(self.times)


def tidy_frame(metric: str, labels: str, times: Floats, values: Floats) -> pd.DataFrame:
    """One series as a tidy frame."""
    return frame_of([Points(metric, labels, np.asarray(times), np.asarray(values))])


def empty_frame() -> pd.DataFrame:
    """A frame with the tidy columns and no rows."""
    return tidy_frame("", "", np.empty(0), np.empty(0))


def concat_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    import pandas as pd

    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_frame()
    return pd.concat(frames, ignore_index=True)


def points_of(series: Sequence[Series]) -> list[Points]:
    """Plain series as arrays."""
    return [
        Points(
            s.metric, s.labels, np.asarray(s.times, np.float64), np.asarray(s.values, np.float64)
        )
        for s in series
    ]


def frame_of(points: Sequence[Points]) -> pd.DataFrame:
    """Series' points, in their order, as one tidy frame (made in one go: a refresh
    of many series pays for one frame, not one per series)."""
    import pandas as pd

    counts = [len(p) for p in points]
    times = np.concatenate([np.asarray(p.times, np.float64) for p in points] or [np.empty(0)])
    values = np.concatenate([np.asarray(p.values, np.float64) for p in points] or [np.empty(0)])
    return pd.DataFrame(
        {
            "time": utc_times(times),
            "metric": np.repeat(np.array([p.metric for p in points], dtype=object), counts),
            "labels": np.repeat(np.array([p.labels for p in points], dtype=object), counts),
            "value": values,
        }
    )


def utc_times(seconds: Floats) -> pd.DatetimeIndex:
    """Epoch seconds as UTC times in nanoseconds (from integers: pandas' parsing of
    floats costs several times more, for the same instants)."""
    import pandas as pd

    nanos = np.round(np.asarray(seconds, np.float64) * 1e9).astype(np.int64)
    return pd.DatetimeIndex(nanos.view("datetime64[ns]")).tz_localize("UTC")


def downsample(times: Floats, values: Floats, max_points: int, method: str) -> Indices:
    """Indices (sorted) of the points to keep: at most ``max_points`` of them."""
    check_method(method)
    n = len(times)
    if method == "none" or n <= max_points:
        return np.arange(n, dtype=np.int64)
    if method == "lttb":
        from tsdownsample import MinMaxLTTBDownsampler

        lttb = MinMaxLTTBDownsampler()  # type: ignore[no-untyped-call]
        picked = lttb.downsample(times, values, n_out=max(3, max_points))
        return np.asarray(picked, dtype=np.int64)
    return minmax_indices(times, values, max(1, max_points // 2))


def bucket_of(times: Floats, buckets: int) -> npt.NDArray[np.int64]:
    """The equal-time bucket (0..buckets-1) of every time of a sorted series."""
    span = float(times[-1] - times[0])
    if span <= 0:
        return np.zeros(len(times), dtype=np.int64)
    scaled: npt.NDArray[np.int64] = ((times - times[0]) * (buckets / span)).astype(np.int64)
    scaled[scaled >= buckets] = buckets - 1
    return scaled


def minmax_indices(times: Floats, values: Floats, buckets: int) -> Indices:
    """First minimum and first maximum of each equal-time bucket, as sorted indices."""
    if len(times) == 0:
        return np.empty(0, dtype=np.int64)
    bucket = bucket_of(times, buckets)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    counts = np.diff(np.r_[starts, len(times)])
    lows = np.repeat(np.minimum.reduceat(values, starts), counts)
    highs = np.repeat(np.maximum.reduceat(values, starts), counts)
    return np.union1d(
        _first_true_per_segment(values == lows, starts),
        _first_true_per_segment(values == highs, starts),
    )


def _first_true_per_segment(flags: npt.NDArray[np.bool_], starts: Indices) -> Indices:
    hits = np.flatnonzero(flags)
    return hits[np.searchsorted(hits, starts)].astype(np.int64)


def points_from_payload(payload: Mapping[str, object]) -> list[Points]:
    """The series of :func:`points_to_payload`'s output."""
    return [
        Points(
            str(item["metric"]),
            str(item["labels"]),
            np.asarray(item["times"], dtype=np.float64),
            np.array(item["values"], dtype=np.float64),  # null is NaN
        )
        for item in payload.get("series", [])  # type: ignore[attr-defined]
    ]


def frame_from_payload(payload: Mapping[str, object]) -> pd.DataFrame:
    """The tidy frame of :func:`points_to_payload`'s output."""
    return frame_of(points_from_payload(payload))
