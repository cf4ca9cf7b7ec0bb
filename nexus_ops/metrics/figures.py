"""Plotly views of metric frames: stat panels and time series, filled in place.

Each view is a pair: ``*_figure(...)`` makes the empty figure (layout only)
and ``update_*(fig, frame, ...)`` fills it from a tidy frame (time, metric,
labels, value). The update works on a ``go.Figure`` and on a ``go.FigureWidget``
alike and changes only the traces' data and a few layout values, so that a
console refresh costs milliseconds. Times are shown in the user's time zone
(:func:`user_timezone`).

>>> import pandas as pd
>>> from nexus_ops.metrics.frames import tidy_frame
>>> fig = stat_figure(STATS["server_status"])
>>> frame = tidy_frame("opencode_server_status", "", pd.Series([0.0, 60.0]), pd.Series([0.0, 1.0]))
>>> update_stat(fig, frame, STATS["server_status"]).layout.annotations[0].text
'UP'
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from nexus_ops.metrics import catalogue as m
from nexus_ops.metrics.catalogue import format_value, iec_power, iec_unit, series_name
from nexus_ops.models import Event, ServerState

GREEN, ORANGE, RED, GREY, BLUE = "#2e7d32", "#ef6c00", "#c62828", "#616161", "#1565c0"
_LABEL_COLORS = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#4e342e"]


@dataclass(frozen=True)
class StatSpec:
    """A Grafana-like stat: title, unit, colour thresholds, optional value texts.

    ``thresholds`` are (from value, colour) pairs in rising order; the first
    applies below every other. ``notes`` say what each threshold's colour means,
    one a threshold (a stat of one colour needs none). A ``steps`` sparkline holds
    each value until the next (a state or a count changes at once, it does not slope).
    """

    title: str
    metric: str
    unit: str = ""
    thresholds: tuple[tuple[float, str], ...] = ((-np.inf, GREEN),)
    texts: Mapping[float, str] = field(default_factory=dict)
    decimals: int = 0
    notes: tuple[str, ...] = ()
    steps: bool = False


@dataclass(frozen=True)
class PanelSpec:
    """A time-series panel: title, metrics it shows, unit of its y axis."""

    title: str
    metrics: tuple[str, ...]
    unit: str = ""


STATS: dict[str, StatSpec] = {
    "server_status": StatSpec(
        "Server status",
        m.SERVER_STATUS.metric,
        thresholds=((-np.inf, RED), (1.0, GREEN)),
        texts={0.0: "DOWN", 1.0: "UP"},
        notes=("red: down", "green: up"),
        steps=True,
    ),
    "uptime": StatSpec(
        "Uptime",
        m.SERVER_UPTIME.metric,
        unit="duration",
        thresholds=((-np.inf, ORANGE), (300.0, GREEN)),
        notes=("orange: up less than 5 min", "green: up 5 min or more"),
    ),
    "restarts": StatSpec(
        "Restarts",
        m.SERVER_STARTS.metric,
        thresholds=((-np.inf, GREEN), (3.0, ORANGE), (10.0, RED)),
        notes=("green: fewer than 3", "orange: 3 to 9", "red: 10 or more"),
        steps=True,
    ),
    "memory": StatSpec(
        "Memory",
        m.PROCESS_MEMORY.metric,
        unit="bytes",
        decimals=1,
        thresholds=((-np.inf, GREEN), (1.5e9, ORANGE), (3e9, RED)),
        notes=(
            f"green: under {format_value(1.5e9, 'bytes', 1)}",
            f"orange: {format_value(1.5e9, 'bytes', 1)} or more",
            f"red: {format_value(3e9, 'bytes', 1)} or more",
        ),
    ),
}

PANELS: dict[str, PanelSpec] = {
    "cpu": PanelSpec(
        "CPU",
        (m.PROCESS_CPU_PERCENT.metric, m.AGENT_CPU_PERCENT.metric),
        "%",
    ),
    "memory": PanelSpec(
        "Resident memory",
        (m.PROCESS_MEMORY.metric, m.AGENT_MEMORY.metric),
        "bytes",
    ),
    "connections": PanelSpec("TCP connections by state", (m.CONNECTIONS.metric,), "count"),
    "request_duration": PanelSpec("Request duration", (m.REQUEST_DURATION.metric,), "seconds"),
    "sessions": PanelSpec("Sessions by status", (m.SESSIONS.metric,), "count"),
}

# Journal events drawn on time series: kind -> (marker symbol, colour).
MARKED_EVENTS: dict[str, tuple[str, str]] = {
    "restart": ("triangle-down", ORANGE),
    "exit": ("x", RED),
    "hung": ("hourglass", RED),
    "fatal": ("octagon", RED),
    "start_failed": ("x-open", RED),
}
_EVENT_TRACE = "restarts and crashes"


def user_timezone(tz: str | None = None) -> str:
    """The time zone to show: ``tz``, else ``$TZ``, else the machine's, else UTC."""
    if tz:
        return tz
    if os.environ.get("TZ"):
        return os.environ["TZ"].lstrip(":")
    return _machine_timezone() or "UTC"


def _machine_timezone() -> str | None:
    """The IANA name of the machine's zone (/etc/localtime's target, /etc/timezone)."""
    localtime = Path("/etc/localtime")
    with contextlib.suppress(OSError):
        target = str(localtime.resolve())
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    with contextlib.suppress(OSError):
        name = Path("/etc/timezone").read_text().strip()
        return name or None
    return None


def local_times(times: pd.Series | pd.DatetimeIndex, tz: str) -> np.ndarray:
    """UTC times as naive wall-clock times of ``tz`` (what a Plotly axis shows as is).

    In milliseconds: a FigureWidget sends a ``datetime64[ns]`` array as integers
    (nanoseconds, drawn as numbers), but ``datetime64[ms]`` as dates.
    """
    index = pd.DatetimeIndex(times)
    if index.tz is None:
        index = index.tz_localize("UTC")
    return index.tz_convert(tz).tz_localize(None).to_numpy().astype("datetime64[ms]")


# The live state of the server as the status stat shows it: text, colour, what it means.
STATES: dict[ServerState, tuple[str, str, str]] = {
    ServerState.RUNNING: ("UP", GREEN, "green: running"),
    ServerState.STARTING: ("STARTING", ORANGE, "orange: starting"),
    ServerState.BACKOFF: ("BACKOFF", ORANGE, "orange: waiting to restart"),
    ServerState.STOPPED: ("STOPPED", GREY, "grey: stopped"),
    ServerState.FATAL: ("FATAL", RED, "red: gave up restarting"),
}


def threshold_color(value: float, thresholds: Sequence[tuple[float, str]]) -> str:
    """The colour of the highest threshold ``value`` reaches."""
    band = _band(value, thresholds)
    return GREY if band is None else thresholds[band][1]


def _band(value: float, thresholds: Sequence[tuple[float, str]]) -> int | None:
    """The index of the highest threshold ``value`` reaches (None for no value)."""
    if not np.isfinite(value):
        return None
    return max((i for i, (start, _) in enumerate(thresholds) if value >= start), default=0)


def stat_note(value: float, spec: StatSpec) -> str:
    """What the colour of ``value`` means on ``spec``'s stat ("grey: no data" without one)."""
    band = _band(value, spec.thresholds)
    if band is None:
        return "grey: no data"
    return spec.notes[band] if band < len(spec.notes) else ""


def stat_rules(spec: StatSpec) -> str:
    """Every colour of ``spec``'s stat and what it means, one a line (its tooltip)."""
    notes = (
        [note for _, _, note in STATES.values()]
        if spec.metric == m.SERVER_STATUS.metric
        else spec.notes
    )
    return "\n".join([*notes, "grey: no data"]) if notes else ""


# -- stat panels -------------------------------------------------------------------


def stat_figure(spec: StatSpec, height: int = 140) -> go.Figure:
    """An empty stat panel: a big value over a sparkline, coloured by thresholds."""
    fig = go.Figure()
    fig.add_scatter(
        x=[],
        y=[],
        mode="lines",
        line={"color": "rgba(255,255,255,0.6)", "shape": "hv" if spec.steps else "linear"},
        fill="tozeroy",
        fillcolor="rgba(255,255,255,0.15)",
        hoverinfo="skip",
        name="history",
    )
    fig.update_layout(
        height=height,
        margin={"l": 0, "r": 0, "t": 28, "b": 0},
        showlegend=False,
        title={"text": spec.title, "x": 0.03, "font": {"color": "white", "size": 14}},
        paper_bgcolor=GREY,
        plot_bgcolor="rgba(0,0,0,0)",
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[
            {
                "text": "-",
                "x": 0.5,
                "y": 0.45,
                "xref": "paper",
                "yref": "paper",
                "showarrow": False,
                "font": {"size": 34, "color": "white"},
            },
            {
                "text": "",
                "x": 0.03,
                "y": 0.0,
                "xref": "paper",
                "yref": "paper",
                "xanchor": "left",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 11, "color": "white"},
                "bgcolor": "rgba(0,0,0,0.25)",  # readable over the sparkline
                # What the colours mean: the shown one on the stat, all of them on hover.
                "hovertext": stat_rules(spec).replace("\n", "<br>"),
            },
        ],
    )
    return fig


def update_stat(fig: go.Figure, frame: pd.DataFrame, spec: StatSpec) -> go.Figure:
    """Show the latest value of ``spec.metric`` in ``frame`` (its history as the sparkline)."""
    values = _history(frame, spec)
    latest = float(values[-1]) if len(values) else float("nan")
    text = spec.texts.get(latest) or format_value(latest, spec.unit, spec.decimals)
    color = threshold_color(latest, spec.thresholds)
    return _fill_stat(fig, values, text, color, stat_note(latest, spec))


def update_status_stat(
    fig: go.Figure, frame: pd.DataFrame, spec: StatSpec, state: ServerState | None
) -> go.Figure:
    """The server status stat: the history of ``frame`` as the sparkline, the value from
    the live ``state`` (what the Server tab shows; stored samples lag it by up to the
    flush interval); the samples' latest value when the state is not known."""
    if state is None:
        return update_stat(fig, frame, spec)
    values = _history(frame, spec)
    text, color, note = STATES[state]
    return _fill_stat(fig, values, text, color, note)


def update_uptime_stat(
    fig: go.Figure, frame: pd.DataFrame, spec: StatSpec, state: ServerState | None
) -> go.Figure:
    """The uptime stat: the samples' latest value while the server runs (or its state is
    not known); a grey "-" while it does not, instead of "0s, orange: up less than 5 min"."""
    if state is None or state is ServerState.RUNNING:
        return update_stat(fig, frame, spec)
    return _fill_stat(fig, _history(frame, spec), "-", GREY, f"grey: {state.value}")


def _history(frame: pd.DataFrame, spec: StatSpec) -> np.ndarray:
    rows = frame[frame["metric"] == spec.metric] if len(frame) else frame
    return rows["value"].to_numpy(dtype=float) if len(rows) else np.empty(0)


def spark_range(values: np.ndarray) -> list[float]:
    """The sparkline's y range: from zero to a little above its highest value, so that
    a flat series (a stopped server's zeros) lies at the bottom instead of a line
    through the stat's number, and the highest point stays inside the panel."""
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if len(finite) else 0.0
    return [0.0, top * 1.1 if top > 0 else 1.0]


def _fill_stat(fig: go.Figure, values: np.ndarray, text: str, color: str, note: str) -> go.Figure:
    with fig.batch_update():
        fig.data[0].x = np.arange(len(values))
        fig.data[0].y = values
        fig.layout.yaxis.range = spark_range(values)
        fig.layout.paper_bgcolor = color
        fig.layout.annotations[0].text = text
        fig.layout.annotations[1].text = note
    return fig


# -- time series ---------------------------------------------------------------------


def timeseries_figure(spec: PanelSpec, tz: str | None = None, height: int = 300) -> go.Figure:
    """An empty time-series panel with a hidden second axis for event markers."""
    zone = user_timezone(tz)
    fig = go.Figure()
    fig.add_scatter(
        x=[],
        y=[],
        mode="markers",
        name=_EVENT_TRACE,
        yaxis="y2",
        marker={"size": 12},
        hovertemplate="%{text}<extra></extra>",
        text=[],
    )
    yaxis: dict[str, object] = {"rangemode": "tozero", **axis_of(spec.unit, 0.0).layout}
    fig.update_layout(
        title={"text": spec.title},
        height=height,
        hovermode="x unified",
        margin={"l": 60, "r": 20, "t": 40, "b": 40},
        legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"},
        xaxis={"title": {"text": f"time ({zone})"}, "type": "date"},
        yaxis=yaxis,
        yaxis2={"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True},
        meta={"tz": zone, "unit": spec.unit},
    )
    return fig


def update_timeseries(
    fig: go.Figure,
    frame: pd.DataFrame,
    events: Sequence[Event] = (),
    tz: str | None = None,
) -> go.Figure:
    """One line per series of ``frame`` (named metric and labels), plus event markers."""
    meta = fig.layout.meta or {}
    zone = tz or meta.get("tz") or user_timezone()
    axis = axis_of(str(meta.get("unit") or ""), _top(frame))
    series = _series_of(frame, zone, axis.factor)
    hover = f"%{{y:{axis.hover}}} {axis.label}".rstrip()
    lines: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    with fig.batch_update():
        fig.layout.yaxis.update(axis.layout)
        existing = {t.name: i for i, t in enumerate(fig.data) if t.name != _EVENT_TRACE}
        for index, (name, (x, y)) in enumerate(series.items()):
            position = existing.pop(name, None)
            if position is None:
                color = _LABEL_COLORS[index % len(_LABEL_COLORS)]
                fig.add_scatter(x=x, y=y, mode="lines", name=name, line={"color": color})
                position = len(fig.data) - 1
            else:
                lines[position] = (x, y)
            trace = fig.data[position]
            if trace.hovertemplate != hover:
                trace.hovertemplate = hover
        for position in existing.values():  # a series gone from the frame: empty its line
            fig.data[position].x, fig.data[position].y = [], []
        _update_events(fig, events, zone)
    set_lines(fig, lines)
    return fig


def set_lines(fig: go.Figure, lines: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """New x and y arrays of existing traces (by position), in one restyle: the arrays are
    what the traces' validators would make of them (``datetime64[ms]`` and floats), and
    checking them again, trace by trace, cost a refresh of many series most of its time."""
    if lines:
        positions = list(lines)
        xs = [np.asarray(lines[p][0]) for p in positions]
        ys = [np.asarray(lines[p][1], dtype=np.float64) for p in positions]
        fig.plotly_restyle({"x": xs, "y": ys}, trace_indexes=positions)


@dataclass(frozen=True)
class Axis:
    """A y axis for a unit: what its values are divided by, its unit's label, its layout."""

    factor: float
    label: str
    hover: str
    layout: dict[str, object]


def axis_of(unit: str, top: float) -> Axis:
    """The y axis of values in ``unit`` up to ``top``: bytes in the IEC unit of ``top``
    (MiB, GiB), seconds as ms below one, counts in whole steps."""
    if unit == "bytes":
        power = iec_power(top)
        return _scaled(1024.0**power, iec_unit(power), ".1f")
    if unit == "seconds":
        return _scaled(1e-3, "ms", ",.0f") if top < 1 else _scaled(1.0, "s", ",.2f")
    if unit == "count":
        # Plotly ticks a small range at 0.2, 0.4...: a count steps by 1 (auto above 5).
        steps = {"dtick": 1, "tick0": 0} if top < 5 else {"dtick": None, "tick0": None}
        return Axis(1.0, "", ",d", {"title": {"text": "count"}, "tickformat": ",d", **steps})
    return _scaled(1.0, unit, ",.1f")


def _scaled(factor: float, label: str, hover: str) -> Axis:
    layout: dict[str, object] = {"title": {"text": label}, "tickformat": "~r"}
    return Axis(factor, label, hover, layout)


def _top(frame: pd.DataFrame) -> float:
    values = frame["value"].to_numpy(dtype=float) if len(frame) else np.empty(0)
    finite = values[np.isfinite(values)]
    return float(np.abs(finite).max()) if len(finite) else 0.0


def _series_of(
    frame: pd.DataFrame, tz: str, factor: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The lines of ``frame`` by name, sorted by metric and labels; times converted once
    for the whole frame, then cut into each series' runs of rows (in the frame's order)."""
    if frame.empty:
        return {}
    times = local_times(frame["time"], tz)
    values = frame["value"].to_numpy(dtype=float) / factor
    runs: dict[tuple[str, str], list[slice]] = {}
    for key, run in series_runs(frame).items():
        runs.setdefault(key, []).extend(run)
    many_metrics = len({metric for metric, _ in runs}) > 1
    out = {}
    for metric, labels in sorted(runs):
        cuts = runs[(metric, labels)]
        x = times[cuts[0]] if len(cuts) == 1 else np.concatenate([times[c] for c in cuts])
        y = values[cuts[0]] if len(cuts) == 1 else np.concatenate([values[c] for c in cuts])
        out[series_name(metric, labels, many_metrics)] = (x, y)
    return out


def series_runs(frame: pd.DataFrame) -> dict[tuple[str, str], list[slice]]:
    """The rows of each series (metric, labels) of a tidy frame, as runs of consecutive
    rows in the frame's order (one run each when the frame is sorted by series)."""
    metrics = frame["metric"].to_numpy(dtype=object)
    labels = frame["labels"].to_numpy(dtype=object)
    changes = (metrics[1:] != metrics[:-1]) | (labels[1:] != labels[:-1])
    bounds = [0, *(np.flatnonzero(changes) + 1).tolist(), len(frame)]
    runs: dict[tuple[str, str], list[slice]] = {}
    for lo, hi in itertools.pairwise(bounds):
        runs.setdefault((str(metrics[lo]), str(labels[lo])), []).append(slice(lo, hi))
    return runs


def _update_events(fig: go.Figure, events: Sequence[Event], tz: str) -> None:
    marked = [e for e in events if e.kind in MARKED_EVENTS]
    trace = next(t for t in fig.data if t.name == _EVENT_TRACE)
    # The same markers as the last refresh (most refreshes): nothing to validate or send.
    drawn = f"{tz}|" + ";".join(f"{e.id}@{e.time}" for e in marked)
    if trace.meta == drawn:
        return
    trace.meta = drawn
    times = pd.to_datetime([e.time for e in marked], unit="s", utc=True)
    trace.x = local_times(times, tz) if marked else []
    trace.y = [0.97] * len(marked)
    trace.text = [_event_text(e) for e in marked]
    trace.marker.symbol = [MARKED_EVENTS[e.kind][0] for e in marked]
    trace.marker.color = [MARKED_EVENTS[e.kind][1] for e in marked]


def _event_text(event: Event) -> str:
    reason = f" ({event.reason})" if event.reason else ""
    message = f": {event.message}" if event.message else ""
    return f"{event.kind}{reason}{message}"[:200]


# -- request-duration quantiles --------------------------------------------------------


def request_quantiles(
    frame: pd.DataFrame, window: str = "1min", quantiles: Sequence[float] = (0.5, 0.95)
) -> pd.DataFrame:
    """p50/p95 (by default) of request durations per ``window``, per path, as a tidy frame.

    ``frame`` holds ``opencode_request_duration_seconds`` samples (one per request).
    """
    rows = frame[frame["metric"] == m.REQUEST_DURATION.metric] if len(frame) else frame
    if rows.empty:
        return frame.iloc[0:0]
    paths = rows["labels"].map(_path_of)
    buckets = rows["time"].dt.floor(window)
    grouped = rows["value"].groupby([paths, buckets]).quantile(np.asarray(quantiles))
    tidy = grouped.rename("value").reset_index()
    tidy.columns = ["path", "time", "q", "value"]
    tidy["metric"] = m.REQUEST_DURATION.metric
    tidy["labels"] = (
        "q=p" + (tidy["q"] * 100).round().astype(int).astype(str) + ",path=" + tidy["path"]
    )
    return tidy[["time", "metric", "labels", "value"]].sort_values(
        ["labels", "time"], ignore_index=True
    )


def _path_of(labels: str) -> str:
    pairs = dict(part.split("=", 1) for part in labels.split(",") if "=" in part)
    return pairs.get("path", "")


DAY_MS = 86_400_000  # a bar is most of its day wide (one day alone would be a hairline)
HOVER = "%{x|%Y-%m-%d}: %{y:,.0f} tokens"


def usage_figure(height: int = 320) -> go.Figure:
    """An empty bar chart of tokens per day (UTC), one stack per provider and model."""
    fig = go.Figure()
    fig.update_layout(
        title={"text": "Tokens per day and model"},
        height=height,
        barmode="stack",
        margin={"l": 60, "r": 20, "t": 40, "b": 40},
        legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"},
        xaxis={
            "title": {"text": "day (UTC)"},
            "type": "date",
            "tickformat": "%b %d",
            "dtick": DAY_MS,
        },
        yaxis={"title": {"text": "tokens"}, "rangemode": "tozero"},
    )
    return fig


def usage_by_model(days: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``provider/model -> day -> tokens`` (every kind added up) of the usage's days.

    >>> usage_by_model([{"day": "2026-12-04", "provider": "p", "model": "m", "tokens": 3.0},
    ...                 {"day": "2026-12-04", "provider": "p", "model": "m", "tokens": 1.0}])
    {'p/m': {'2026-12-04': 4.0}}
    """
    found: dict[str, dict[str, float]] = {}
    for row in days:
        per_day = found.setdefault(f"{row['provider']}/{row['model']}", {})
        per_day[str(row["day"])] = per_day.get(str(row["day"]), 0.0) + float(row["tokens"])
    return found


def update_usage(fig: go.Figure, days: Sequence[Mapping[str, Any]]) -> go.Figure:
    """One bar trace per provider and model over every day that has tokens."""
    models = usage_by_model(days)
    axis = sorted({day for per_day in models.values() for day in per_day})
    with fig.batch_update():
        if [t.name for t in fig.data] != list(models):
            fig.data = []
            for name in models:
                fig.add_bar(x=[], y=[], name=name, width=DAY_MS * 0.8, hovertemplate=HOVER)
        for trace, per_day in zip(fig.data, models.values(), strict=True):
            trace.x = axis
            trace.y = [per_day.get(day, 0.0) for day in axis]
        today = str(datetime.datetime.now(datetime.UTC).date())
        # An empty date axis with a tick a day would draw ticks for years.
        fig.layout.xaxis.range = (
            usage_range(axis[0], axis[-1]) if axis else usage_range(today, today)
        )
    return fig


def usage_range(first: str, last: str, days: int = 7) -> list[str]:
    """The x range of the usage chart: at least the last ``days`` days, whole days.

    >>> usage_range("2026-12-04", "2026-12-04")
    ['2026-11-27 12:00', '2026-12-04 12:00']
    """
    end = datetime.date.fromisoformat(last)
    start = min(datetime.date.fromisoformat(first), end - datetime.timedelta(days=days - 1))
    return [f"{start - datetime.timedelta(days=1)} 12:00", f"{end} 12:00"]
