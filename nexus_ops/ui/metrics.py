"""The Metrics panel: the stat panels and time series of :mod:`nexus_ops.metrics.figures`.

Each figure is a FigureWidget made once and filled in place (``batch_update``):
a refresh sends only new trace data. The range picker asks the agent for the last
15 minutes, hour, day or week; the journal's restarts and crashes are drawn as
markers on every time series. A refresh asks for all of the tab's series in one
request, and only for what is new since the points it holds (:class:`Kept`).

>>> RANGES["1 h"], RANGE_SECONDS["7d"]
('1h', 604800.0)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from nexus_ops.metrics import catalogue as m
from nexus_ops.metrics import figures
from nexus_ops.metrics.frames import Points, concat_frames, empty_frame, frame_of
from nexus_ops.models import PLANNED_EXITS, Event, ServerState
from nexus_ops.ui.base import Panel, PanelContext
from nexus_ops.ui.figurewidget import figure_widget

RANGES: dict[str, str] = {"15 min": "15m", "1 h": "1h", "24 h": "24h", "7 d": "7d"}
RANGE_SECONDS: dict[str, float] = {"15m": 900.0, "1h": 3600.0, "24h": 86400.0, "7d": 604800.0}
STAT_KEYS = ("server_status", "uptime", "restarts", "memory")
SERIES_KEYS = ("cpu", "memory", "connections", "request_duration", "sessions")
REQUESTS = m.REQUEST_DURATION.metric
# The duration of the requests the server answered (a failed one lasts as long as the
# timeout says, which tells nothing of the server's speed; failures show as restarts).
ANSWERED = {"outcome": "ok"}
# Points per series: about one per pixel of a half-width panel; a stat's sparkline
# is smaller.
MAX_POINTS = 600
STAT_POINTS = 150
# Raw request durations (one a second per path) are turned into p50/p95 per 30 s
# up to this range; beyond it the per-minute (or per-hour) mean and max rollups are
# drawn, which cost the agent and the kernel a tenth.
RAW_REQUESTS_UP_TO = 900.0
# A refresh asks again for the last seconds it holds: a probe's sample is written
# when the probe ends, after samples of later ticks may have been read.
SINCE_MARGIN = 10.0


@dataclass
class MetricsData:
    """One refresh's worth: a frame per metric, the request-duration frame, the events,
    and the server's live state (the status stat shows it, as the Server tab does)."""

    span: str
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    requests: pd.DataFrame = field(default_factory=empty_frame)
    events: list[Event] = field(default_factory=list)
    state: ServerState | None = None


def stat_spec(key: str) -> figures.StatSpec:
    """The stat of ``key``; the count of server starts is called what it is (the
    Server tab shows the restarts)."""
    spec = figures.STATS[key]
    return replace(spec, title="Starts") if spec.metric == m.SERVER_STARTS.metric else spec


def wanted_metrics() -> dict[str, int]:
    """Every metric the panel shows (request durations aside), with the points it needs."""
    wanted = {figures.STATS[k].metric: STAT_POINTS for k in STAT_KEYS}
    for key in SERIES_KEYS:
        wanted.update(
            {name: MAX_POINTS for name in figures.PANELS[key].metrics if name != REQUESTS}
        )
    return wanted


def break_gaps(frame: pd.DataFrame, factor: float = 4.0) -> pd.DataFrame:
    """A NaN point inside every gap of a series longer than ``factor`` times its usual
    (median) step, so that its line breaks where nothing was sampled (the server or the
    agent was down) instead of drawing a straight line across.

    ``frame`` is tidy and sorted by series, then time (what the agent answers).
    """
    if len(frame) < 3:
        return frame
    times = frame["time"].to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e6  # ms
    steps = np.diff(times)
    found = []
    for runs in figures.series_runs(frame).values():
        inside = [steps[run.start : run.stop - 1] for run in runs]
        usual = np.concatenate(inside)
        if not len(usual):
            continue
        limit = factor * float(np.median(usual))
        found += [
            run.start + np.flatnonzero(part > limit) for run, part in zip(runs, inside, strict=True)
        ]
    gaps = np.sort(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
    if len(gaps) == 0:
        return frame
    holes = frame.iloc[gaps].copy()
    holes["time"] = holes["time"] + pd.to_timedelta(steps[gaps] / 2, unit="ms")
    holes["value"] = np.nan
    order = np.concatenate([np.arange(len(frame)), gaps + 0.5])
    merged = pd.concat([frame, holes], ignore_index=True)
    return merged.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


def append_points(old: Sequence[Points], new: Sequence[Points], start: float) -> list[Points]:
    """``old`` with ``new`` appended: per series, ``new`` replaces what ``old`` holds
    from ``new``'s first time on; points before ``start`` (epoch seconds) go. Sorted
    by labels, as the agent answers."""
    series = {p.labels: p for p in old}
    for p in new:
        was = series.get(p.labels)
        if was is not None and len(p):
            keep = was.times < p.times[0]
            times = np.concatenate([was.times[keep], p.times])
            p = Points(p.metric, p.labels, times, np.concatenate([was.values[keep], p.values]))
        series[p.labels] = p
    found = []
    for _, p in sorted(series.items()):
        first = int(np.searchsorted(p.times, start, "left"))
        if first < len(p):
            found.append(Points(p.metric, p.labels, p.times[first:], p.values[first:]))
    return found


@dataclass
class Kept:
    """What the last refresh of a range got, per query, for the next to append to.

    A series grown past twice its points (raw samples appended to a downsampled
    answer) makes its query ask for the whole range again, downsampled anew.
    """

    span: str = ""
    series: dict[str, list[Points]] = field(default_factory=dict)

    def since(self, span: str, key: str, points: int) -> float | None:
        """What query ``key`` asks ``since`` (None: the whole range)."""
        if span != self.span:
            self.span, self.series = span, {}
        kept = self.series.get(key)
        if not kept or max(len(p) for p in kept) > 2 * points:
            return None
        return max(float(p.times[-1]) for p in kept) - SINCE_MARGIN

    def update(
        self, key: str, new: list[Points], since: float | None, start: float
    ) -> pd.DataFrame:
        """Keep what query ``key`` answered (asked ``since``); the frame to show."""
        old = self.series.get(key) if since is not None else None
        kept = [p for p in new if len(p)] if old is None else append_points(old, new, start)
        self.series[key] = kept
        return frame_of(kept)


def _label(text: str, name: str) -> str:
    """The value of label ``name`` in ``a=1,b=2`` text ("" when absent)."""
    pairs = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    return pairs.get(name, "")


def window_of(data: MetricsData, now: float, fit: bool = True) -> list[Any]:
    """The x axis's range, in the figures' time zone: the span up to now, or with ``fit``
    from the first sample on when the data is younger than the span (a new server's two
    minutes fill the plot instead of a line at its edge)."""
    frames = data.frames.values() if fit else []
    firsts = [frame["time"].min().timestamp() for frame in frames if len(frame)]
    start = now - RANGE_SECONDS[data.span]
    start = max(start, min(firsts)) if firsts else start
    times = pd.to_datetime([start, now], unit="s", utc=True)
    return list(figures.local_times(times, figures.user_timezone()))


def queries_of(span: str) -> dict[str, dict[str, Any]]:
    """The queries of one refresh of ``span``, by key: the wanted metrics by name, then
    the request durations (raw up to :data:`RAW_REQUESTS_UP_TO`, else mean and max)."""
    queries: dict[str, dict[str, Any]] = {
        name: {"metric": name, "start": span, "max_points": points}
        for name, points in wanted_metrics().items()
    }
    asked = {"metric": REQUESTS, "labels": ANSWERED, "start": span}
    if RANGE_SECONDS[span] <= RAW_REQUESTS_UP_TO:
        queries["requests"] = {**asked, "method": "none", "max_points": 100_000}
        return queries
    for agg in ("mean", "max"):
        queries[f"requests:{agg}"] = {**asked, "max_points": MAX_POINTS, "agg": agg}
    return queries


def requests_frame(span: str, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The request-duration lines of a refresh's frames: p50/p95 of the raw durations,
    or the mean and max rollups, each line named by its path."""
    if RANGE_SECONDS[span] <= RAW_REQUESTS_UP_TO:
        return figures.request_quantiles(frames["requests"], window="30s")
    lines = []
    for agg in ("mean", "max"):
        frame = frames[f"requests:{agg}"].copy()
        # Named once per series, not once per point (a day holds 600 points a path).
        names = {text: f"q={agg},path={_label(text, 'path')}" for text in frame["labels"].unique()}
        frame["labels"] = frame["labels"].map(names)
        lines.append(frame)
    return concat_frames(lines)


class MetricsPanel(Panel[MetricsData]):
    """Stat panels over time series, with a range picker; refreshed in batches.

    >>> # panel = MetricsPanel(ctx); panel.refresh(); panel.stats["uptime"].layout.annotations
    """

    title = "Metrics"
    interval = 5.0
    css = "nx-metrics"

    def __init__(self, ctx: PanelContext) -> None:
        self.span = "1h"
        self.picked = False
        self._drawn_span = self.span
        self.kept = Kept()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nexus-console-query")
        super().__init__(ctx)
        if ctx.settings is not None:
            self.interval = max(2.0, ctx.settings.metrics_interval)

    def build(self) -> widgets.Widget:
        self.range = widgets.ToggleButtons(options=list(RANGES.items()), value=self.span)
        self.range.add_class("nx-range")
        self.range.style.button_width = "70px"
        self.range.observe(self.guarded(self.range_changed), names="value")
        self.stats: dict[str, go.FigureWidget] = {}
        self.series: dict[str, go.FigureWidget] = {}
        stat_boxes = [self._stat(key) for key in STAT_KEYS]
        series_boxes = [self._series(key) for key in SERIES_KEYS]
        # Four stats in a row, two by two on a phone; two series a row, one on a phone.
        stats = widgets.HBox(stat_boxes, layout=widgets.Layout(width="100%", flex_flow="row wrap"))
        grid = widgets.GridBox(
            series_boxes,
            layout=widgets.Layout(
                width="100%",
                grid_template_columns="repeat(auto-fit, minmax(min(100%, max(420px, 45%)), 1fr))",
                grid_gap="8px",
            ),
        )
        self.updated = widgets.HTML()
        self.updated.add_class("nx-muted")
        top = widgets.HBox([self.range, self.updated], layout=widgets.Layout(align_items="center"))
        return widgets.VBox([top, stats, grid])

    def _stat(self, key: str) -> widgets.Box:
        spec = stat_spec(key)
        fig = figure_widget(figures.stat_figure(spec, height=120))
        fig.add_class("nx-figure")
        fig.add_class("nx-stat")
        fig.add_class(f"nx-stat-{key.replace('_', '-')}")
        self.stats[key] = fig
        return widgets.Box(
            [fig], layout=widgets.Layout(flex="1 1 170px", min_width="0", padding="2px")
        )

    def _series(self, key: str) -> widgets.Box:
        figure = figures.timeseries_figure(figures.PANELS[key], height=340)
        # Half a page is narrow: the legend goes on its own rows at the bottom, where
        # it never covers the title, however many series there are (up to three rows).
        figure.update_layout(
            margin_b=110,
            legend={"x": 0, "xanchor": "left", "yref": "container", "y": 0, "yanchor": "bottom"},
        )
        fig = figure_widget(figure)
        fig.add_class("nx-figure")
        fig.add_class("nx-timeseries")
        fig.add_class(f"nx-series-{key.replace('_', '-')}")
        self.series[key] = fig
        return widgets.Box([fig], layout=widgets.Layout(min_width="0"))

    def range_changed(self, change: object = None) -> None:
        self.span = str(self.range.value)
        self.picked = True
        self.in_background(self.refresh)

    # ---- refresh -----------------------------------------------------------------------

    def fetch(self) -> MetricsData:
        span = self.span
        client = self.ctx.client
        start = time.time() - RANGE_SECONDS[span]
        marked = self._pool.submit(
            client.events, since=start, kinds=list(figures.MARKED_EVENTS), limit=500
        )
        status = self._pool.submit(client.status)
        queries = queries_of(span)
        since = {key: self.kept.since(span, key, q["max_points"]) for key, q in queries.items()}
        answers = client.query_points_many([{**q, "since": since[k]} for k, q in queries.items()])
        frames = {
            key: self.kept.update(key, frame, since[key], start)
            for key, frame in zip(queries, answers, strict=True)
        }
        # A stop someone asked for (an operator, a restore) is neither a restart nor a crash.
        events = [
            e for e in marked.result() if not (e.kind == "exit" and e.reason in PLANNED_EXITS)
        ]
        return MetricsData(
            span=span,
            frames={name: frames[name] for name in wanted_metrics()},
            requests=requests_frame(span, frames),
            events=events,
            state=status.result().state,
        )

    def show(self, data: MetricsData) -> None:
        if data.span != self.span:
            return  # the range changed while this was fetched; the next refresh shows it
        for key, fig in self.stats.items():
            spec = stat_spec(key)
            frame = data.frames.get(spec.metric, empty_frame())
            if key == "server_status":
                figures.update_status_stat(fig, frame, spec, data.state)
            elif key == "uptime":
                figures.update_uptime_stat(fig, frame, spec, data.state)
            else:
                figures.update_stat(fig, frame, spec)
        reset = data.span != self._drawn_span
        # The default range fits young data; a range the operator picked is shown whole.
        window = window_of(data, time.time(), fit=not self.picked)
        for key, fig in self.series.items():
            if reset:
                fig.data = fig.data[:1]  # only the event markers: new lines for the new range
            with fig.batch_update():  # one message: the lines and the x axis's range
                figures.update_timeseries(fig, self._frame_of(key, data), data.events)
                fig.layout.xaxis.range = window
        self._drawn_span = data.span
        self.updated.value = f"updated {time.strftime('%H:%M:%S')}"

    def _frame_of(self, key: str, data: MetricsData) -> pd.DataFrame:
        if key == "request_duration":
            return break_gaps(data.requests)
        frames = [data.frames[name] for name in figures.PANELS[key].metrics if name in data.frames]
        return break_gaps(concat_frames(frames)) if frames else empty_frame()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
