"""Figures: filled in place from tidy frames, on Figure and FigureWidget alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from _plotly_utils import basevalidators

from nexus_ops.metrics import figures as F
from nexus_ops.metrics.frames import concat_frames, empty_frame, tidy_frame
from nexus_ops.models import Event, ServerState

NOW = 1_800_000_000.0
TIMES = NOW - np.arange(100)[::-1] * 5.0


def _connections() -> pd.DataFrame:
    return concat_frames(
        [
            tidy_frame("opencode_connections", f"state={s}", TIMES, np.full(100, float(n)))
            for s, n in (("LISTEN", 1), ("CLOSE_WAIT", 7))
        ]
    )


EVENTS = [
    Event(id=1, time=NOW - 100, kind="restart", reason="hang", message="3 probes failed"),
    Event(id=2, time=NOW - 200, kind="exit", reason="crash", message="pid 9 exited with code 1"),
    Event(id=3, time=NOW - 300, kind="ready", message="not drawn"),
]


@pytest.mark.parametrize("kind", [go.Figure, go.FigureWidget])
def test_timeseries_draws_a_line_per_series_and_the_events(kind: type[go.Figure]) -> None:
    fig = kind(F.timeseries_figure(F.PANELS["connections"], tz="Asia/Tokyo"))
    F.update_timeseries(fig, _connections(), EVENTS)
    lines = {t.name: t for t in fig.data if t.name != "restarts and crashes"}
    assert set(lines) == {"CLOSE_WAIT", "LISTEN"}
    assert list(lines["CLOSE_WAIT"].y) == [7.0] * 100
    # Tokyo is UTC+9 all year: the axis shows wall-clock time there.
    first = pd.Timestamp(lines["LISTEN"].x[0])
    assert first == pd.Timestamp(TIMES[0], unit="s") + pd.Timedelta(hours=9)
    assert fig.layout.xaxis.title.text == "time (Asia/Tokyo)"
    events = next(t for t in fig.data if t.name == "restarts and crashes")
    assert list(events.text) == [
        "restart (hang): 3 probes failed",
        "exit (crash): pid 9 exited with code 1",
    ]
    assert list(events.marker.symbol) == ["triangle-down", "x"]


def test_update_replaces_data_in_place_and_empties_vanished_series() -> None:
    fig = F.timeseries_figure(F.PANELS["connections"], tz="UTC")
    F.update_timeseries(fig, _connections())
    first_traces = list(fig.data)
    only_listen = _connections().query("labels == 'state=LISTEN'")
    F.update_timeseries(fig, only_listen)
    assert list(fig.data) == first_traces  # the same trace objects, no rebuild
    close_wait = next(t for t in fig.data if t.name == "CLOSE_WAIT")
    assert len(close_wait.y) == 0
    F.update_timeseries(fig, empty_frame())
    assert all(len(t.y) == 0 for t in fig.data)


def test_new_points_of_existing_lines_skip_the_trace_validators(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fig = go.FigureWidget(F.timeseries_figure(F.PANELS["connections"], tz="Asia/Tokyo"))
    F.update_timeseries(fig, _connections())
    grown = concat_frames(
        [
            tidy_frame("opencode_connections", f"state={s}", TIMES + 5.0, np.full(100, n))
            for s, n in (("LISTEN", 2.0), ("CLOSE_WAIT", 9.0))
        ]
    )
    checked: list[object] = []
    real = basevalidators.copy_to_readonly_numpy_array

    def counting(v: object, *args: object, **kwargs: object) -> object:
        checked.append(v)
        return real(v, *args, **kwargs)

    monkeypatch.setattr(basevalidators, "copy_to_readonly_numpy_array", counting)
    F.update_timeseries(fig, grown)
    lines = {t.name: t for t in fig.data if t.name != "restarts and crashes"}
    assert list(lines["CLOSE_WAIT"].y) == [9.0] * 100
    last = pd.Timestamp(lines["LISTEN"].x[-1])
    assert last == pd.Timestamp(TIMES[-1] + 5.0, unit="s") + pd.Timedelta(hours=9)
    assert not checked, "the lines' arrays went through the validators again"


@pytest.mark.parametrize(
    ("key", "value", "text", "color"),
    [
        ("server_status", 1.0, "UP", F.GREEN),
        ("server_status", 0.0, "DOWN", F.RED),
        ("memory", 3.3e8, "314.7 MiB", F.GREEN),
        ("memory", 2e9, "1.9 GiB", F.ORANGE),
        ("uptime", 3725.0, "1h 2m", F.GREEN),
        ("restarts", 12.0, "12", F.RED),
    ],
)
def test_stat_panels_show_value_and_threshold_colour(key, value, text, color) -> None:
    spec = F.STATS[key]
    fig = go.FigureWidget(F.stat_figure(spec))
    frame = tidy_frame(spec.metric, "", TIMES[-2:], np.array([0.5, value]))
    F.update_stat(fig, frame, spec)
    assert fig.layout.annotations[0].text == text
    assert fig.layout.paper_bgcolor == color
    assert list(fig.data[0].y) == [0.5, value]


def test_a_stat_says_what_its_colour_means() -> None:
    spec = F.STATS["uptime"]
    fig = go.FigureWidget(F.stat_figure(spec))
    F.update_stat(fig, tidy_frame(spec.metric, "", TIMES[-2:], np.array([1.0, 14.0])), spec)
    assert (fig.layout.paper_bgcolor, fig.layout.annotations[0].text) == (F.ORANGE, "14s")
    assert fig.layout.annotations[1].text == "orange: up less than 5 min"
    F.update_stat(fig, tidy_frame(spec.metric, "", TIMES[-2:], np.array([1.0, 400.0])), spec)
    assert fig.layout.annotations[1].text == "green: up 5 min or more"
    F.update_stat(fig, empty_frame(), spec)
    assert fig.layout.annotations[1].text == "grey: no data"
    memory = F.STATS["memory"]
    assert F.stat_note(2e9, memory) == "orange: 1.4 GiB or more"
    rules = F.stat_rules(memory).splitlines()
    assert rules[:3] == ["green: under 1.4 GiB", "orange: 1.4 GiB or more", "red: 2.8 GiB or more"]
    assert rules[3:] == ["grey: no data"]
    for key, every in F.STATS.items():  # every colour a stat can take is explained
        assert len(every.notes) == len(every.thresholds), key


@pytest.mark.parametrize(
    ("state", "text", "color"),
    [
        (ServerState.RUNNING, "UP", F.GREEN),
        (ServerState.STARTING, "STARTING", F.ORANGE),
        (ServerState.BACKOFF, "BACKOFF", F.ORANGE),
        (ServerState.STOPPED, "STOPPED", F.GREY),
        (ServerState.FATAL, "FATAL", F.RED),
    ],
)
def test_the_status_stat_shows_the_live_state_over_lagging_samples(state, text, color) -> None:
    spec = F.STATS["server_status"]
    fig = go.FigureWidget(F.stat_figure(spec))
    # The stored samples still say down (the server started a second ago) or still
    # up (it was just stopped); the stat says what the server is now.
    lagging = 0.0 if state is ServerState.RUNNING else 1.0
    frame = tidy_frame(spec.metric, "", TIMES[-2:], np.array([lagging, lagging]))
    F.update_status_stat(fig, frame, spec, state)
    assert (fig.layout.annotations[0].text, fig.layout.paper_bgcolor) == (text, color)
    note = fig.layout.annotations[1].text
    assert note.startswith(color_name(color)) and note in F.stat_rules(spec).splitlines()
    assert list(fig.data[0].y) == [lagging, lagging], "the history stays the samples'"
    F.update_status_stat(fig, frame, spec, None)  # no live state: the samples
    assert fig.layout.annotations[0].text == ("DOWN" if lagging == 0.0 else "UP")


def test_the_uptime_of_a_server_that_does_not_run_is_grey_not_young() -> None:
    spec = F.STATS["uptime"]
    fig = go.FigureWidget(F.stat_figure(spec))
    frame = tidy_frame(spec.metric, "", TIMES[-2:], np.array([30.0, 0.0]))
    F.update_uptime_stat(fig, frame, spec, ServerState.STOPPED)
    assert (fig.layout.annotations[0].text, fig.layout.paper_bgcolor) == ("-", F.GREY)
    assert fig.layout.annotations[1].text == "grey: stopped"
    assert list(fig.data[0].y) == [30.0, 0.0], "the history stays"
    F.update_uptime_stat(fig, frame, spec, ServerState.RUNNING)
    assert (fig.layout.annotations[0].text, fig.layout.paper_bgcolor) == ("0s", F.ORANGE)


def color_name(color: str) -> str:
    return {F.GREEN: "green", F.ORANGE: "orange", F.GREY: "grey", F.RED: "red"}[color]


def test_a_flat_sparkline_lies_at_the_bottom_not_across_the_number() -> None:
    spec = F.STATS["restarts"]
    fig = go.FigureWidget(F.stat_figure(spec))
    F.update_stat(fig, tidy_frame(spec.metric, "", TIMES[-3:], np.zeros(3)), spec)
    assert list(fig.layout.yaxis.range) == [0.0, 1.0]
    F.update_stat(fig, tidy_frame(spec.metric, "", TIMES[-3:], np.array([1.0, 2.0, 2.0])), spec)
    low, high = fig.layout.yaxis.range
    assert low == 0.0 and high > 2.0, "the top of the line stays inside the panel"
    # A state or a count steps: a one-sample dip is a notch, not a thin spike.
    assert fig.data[0].line.shape == "hv"
    assert F.stat_figure(F.STATS["server_status"]).data[0].line.shape == "hv"
    assert F.stat_figure(F.STATS["uptime"]).data[0].line.shape == "linear"


def test_stat_without_data_is_grey() -> None:
    fig = F.update_stat(F.stat_figure(F.STATS["memory"]), empty_frame(), F.STATS["memory"])
    assert fig.layout.annotations[0].text == "-" and fig.layout.paper_bgcolor == F.GREY


def test_request_quantiles_per_window_and_path() -> None:
    times = NOW + np.arange(120.0)  # two minutes of one request a second
    values = np.arange(120.0) / 1000
    frame = concat_frames(
        [tidy_frame("opencode_request_duration_seconds", "outcome=ok,path=/session", times, values)]
    )
    q = F.request_quantiles(frame)
    assert sorted(q["labels"].unique()) == ["q=p50,path=/session", "q=p95,path=/session"]
    p95 = q[q["labels"] == "q=p95,path=/session"]["value"].tolist()
    minute = np.floor(times / 60) * 60
    expected = [np.quantile(values[minute == m], 0.95) for m in sorted(set(minute))]
    assert p95 == pytest.approx(expected)


def test_format_value() -> None:
    assert F.format_value(512, "bytes") == "512 B"
    assert F.format_value(float("nan"), "bytes") == "-"
    assert F.format_value(0.25, "seconds", 2) == "250 ms"
    assert F.format_value(3221225472, "bytes", 1) == "3.0 GiB"
    assert F.threshold_color(5, ((-np.inf, "a"), (3, "b"), (10, "c"))) == "b"


def test_panels_name_their_lines_for_people() -> None:
    frame = concat_frames(
        [
            tidy_frame("opencode_process_resident_memory_bytes", "", TIMES, np.ones(100)),
            tidy_frame("nexus_agent_resident_memory_bytes", "", TIMES, np.ones(100)),
        ]
    )
    fig = F.update_timeseries(F.timeseries_figure(F.PANELS["memory"], tz="UTC"), frame)
    assert {t.name for t in fig.data} == {"server", "agent", "restarts and crashes"}


def test_legends_read_like_words_not_label_text() -> None:
    times = TIMES[:3]
    frame = concat_frames(
        [
            tidy_frame("opencode_request_duration_seconds", f"q={q},path={p}", times, np.ones(3))
            for q, p in (("max", "/global/health"), ("p95", "/session/status"))
        ]
    )
    fig = F.update_timeseries(F.timeseries_figure(F.PANELS["request_duration"], tz="UTC"), frame)
    names = {t.name for t in fig.data} - {"restarts and crashes"}
    assert names == {"max · health checks", "p95 · session status"}


def test_memory_axis_is_in_iec_units_and_counts_tick_whole() -> None:
    frame = tidy_frame("opencode_process_resident_memory_bytes", "", TIMES, np.full(100, 5.0e8))
    fig = F.update_timeseries(F.timeseries_figure(F.PANELS["memory"], tz="UTC"), frame)
    assert fig.layout.yaxis.title.text == "MiB"
    line = next(t for t in fig.data if t.name == "server")
    assert line.y[0] == pytest.approx(5.0e8 / 2**20)
    assert line.hovertemplate == "%{y:.1f} MiB"
    few = tidy_frame("opencode_sessions", "status=idle", TIMES, np.full(100, 1.0))
    counts = F.update_timeseries(F.timeseries_figure(F.PANELS["sessions"], tz="UTC"), few)
    assert counts.layout.yaxis.dtick == 1 and counts.layout.yaxis.tickformat == ",d"
