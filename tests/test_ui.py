"""The console's panels, without a browser: built on a small agent stand-in and exercised.

The stand-in answers like the agent's client (same methods, same value types) and
can be told to fail; the real agent and a real browser are in test_console_e2e.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from html import unescape
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from conftest import points_of
from ipywidgets.widgets.widget import _instances
from plotly.serializers import _py_to_js

from nexus_ops.alerts import AlertsView
from nexus_ops.backup.models import BackupInfo
from nexus_ops.config import load_settings
from nexus_ops.errors import AgentError, AgentUnavailable, NexusOpsError
from nexus_ops.metrics.frames import Points, concat_frames, tidy_frame
from nexus_ops.models import ActionResult, Event, ServerState, ServerStatus
from nexus_ops.ui import Console, Panel, PanelContext, TabRegistry, console, register_tab
from nexus_ops.ui.app import BrokenPanel, read_password
from nexus_ops.ui.backups import backups_html, schedule_html
from nexus_ops.ui.environment import EnvironmentPanel, home_mismatch
from nexus_ops.ui.events import EventsPanel, events_html, highlight
from nexus_ops.ui.figurewidget import ASSET, asset_url, figure_widget, shim
from nexus_ops.ui.live import PageWatch, Refresher
from nexus_ops.ui.logs import LogsPanel, render_lines
from nexus_ops.ui.metrics import (
    REQUESTS,
    SINCE_MARGIN,
    MetricsPanel,
    append_points,
    break_gaps,
    queries_of,
    wanted_metrics,
)
from nexus_ops.ui.registry import TABS
from nexus_ops.ui.server import ServerPanel, qr_svg
from nexus_ops.ui.style import CSS
from nexus_ops.ui.usage import UsagePanel, models_html, state_html

PASSWORD = "s3cret-Pa55word-that-must-not-leak"
NOW = time.time()


class FakeAgent:
    """Answers like AgentClient; ``fail`` makes every call raise it."""

    def __init__(self) -> None:
        self.state = ServerState.STOPPED
        self.pid: int | None = None
        self.restarts = 0
        self.fail: Exception | None = None
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.journal: list[Event] = []
        self.log_lines = ["opencode server listening on http://127.0.0.1:4096", "an error <b>"]

    def _call(self, name: str, **kwargs: Any) -> None:
        self.calls.append((name, kwargs))
        if self.fail is not None:
            raise self.fail

    def called(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for called, kwargs in self.calls if called == name]

    def status(self) -> ServerStatus:
        self._call("status")
        running = self.state is ServerState.RUNNING
        return ServerStatus(
            state=self.state,
            desired="running" if running else "stopped",
            pid=self.pid,
            version="1.18.33" if running else None,
            port=4096,
            url="http://127.0.0.1:4096",
            uptime_seconds=3725.0 if running else 0.0,
            restarts=self.restarts,
            last_exit="crash: pid 9 exited with signal 9" if self.restarts else None,
        )

    def _result(self, message: str) -> ActionResult:
        return ActionResult(ok=True, message=message, status=self.status())

    def start(self, wait: bool = True) -> ActionResult:
        self._call("start", wait=wait)
        self.state, self.pid = ServerState.RUNNING, 100
        return self._result("started")

    def stop(self) -> ActionResult:
        self._call("stop")
        self.state, self.pid = ServerState.STOPPED, None
        return self._result("stopped")

    def restart(self, wait: bool = True) -> ActionResult:
        self._call("restart", wait=wait)
        self.restarts += 1
        self.pid = (self.pid or 100) + 1
        return self._result("restarted")

    def upgrade_status(self) -> dict[str, Any]:
        self._call("upgrade_status")
        return {"operation": None, "upgrades": {}, "rollbacks": 0}

    def events(
        self,
        since: float | None = None,
        kinds: list[str] | None = None,
        limit: int = 200,
        after_id: int | None = None,
    ) -> list[Event]:
        self._call("events", since=since, kinds=kinds, limit=limit, after_id=after_id)
        found = [e for e in self.journal if after_id is None or e.id > after_id]
        found = [e for e in found if not kinds or e.kind in kinds]
        return found[-limit:]

    def alerts(self) -> AlertsView:
        self._call("alerts")
        return AlertsView(evaluated_at=None, interval=5.0, rules=[], receivers=[], recent=[])

    def usage(self, sessions: int = 10) -> dict[str, Any]:
        self._call("usage", sessions=sessions)
        tokens = {"input": 7181.0, "output": 23.0, "reasoning": 0.0}
        model = {"provider": "scripted", "model": "m1", "cost": 7.273, "messages": 4.0}
        model.update(errors=1.0, tokens={**tokens, "cache_read": 5.0, "cache_write": 0.0})
        session = {"id": "ses_1", "title": "<b>Greeting</b>", "tokens": 7209.0, "cost": 7.273}
        session.update(messages=4.0, updated=NOW)
        days = [
            {"day": d, "provider": "scripted", "model": "m1", "kind": k, "tokens": n}
            for d, k, n in (("2026-12-03", "input", 100.0), ("2026-12-04", "input", 7081.0))
        ]
        days.append({"day": "2026-12-04", "provider": "scripted", "model": "m1", "kind": "output"})
        days[-1]["tokens"] = 23.0
        return {
            "connected": True,
            "synced": True,
            "connections": 1,
            "in_flight": 2,
            "models": [model],
            "tools": [{"tool": "bash", "outcome": "completed", "calls": 3.0}],
            "days": days,
            "sessions": [session],
        }

    def logs(self, lines: int = 200, contains: str | None = None) -> list[str]:
        self._call("logs", lines=lines, contains=contains)
        kept = [line for line in self.log_lines if not contains or contains in line]
        return kept[-lines:]

    def config(self) -> dict[str, Any]:
        self._call("config")
        return {
            "profile": "staging",
            "settings": [
                {"variable": "NEXUS_ENV", "value": "staging", "description": "Profile."},
                {"variable": "NEXUS_HOME", "value": "/srv/nexus", "description": "Data."},
                {"variable": "NEXUS_ALERT_WEBHOOK_TOKEN", "value": "****", "description": "T."},
            ],
        }

    def query_metrics(self, metric: str, **kwargs: Any) -> pd.DataFrame:
        self._call("query_metrics", metric=metric, **kwargs)
        times = NOW - np.arange(60)[::-1] * 10.0
        if metric == "opencode_connections":
            return concat_frames(
                [
                    tidy_frame(metric, f"state={s}", times, np.full(60, n))
                    for s, n in (("LISTEN", 1.0), ("ESTABLISHED", 3.0))
                ]
            )
        if metric == REQUESTS:
            assert kwargs["labels"] == {"outcome": "ok"}, "only answered requests"
            values = np.linspace(0.001, 0.05, 60)
            return tidy_frame(metric, "outcome=ok,path=/global/health", times, values)
        value = 1.0 if metric == "opencode_server_status" else 42.0
        return tidy_frame(metric, "", times, np.full(60, value))

    def query_points_many(self, queries: Sequence[Mapping[str, Any]]) -> list[list[Points]]:
        self._call("query_points_many", count=len(queries))
        return [points_of(self.query_metrics(**query)) for query in queries]


CORE = ("Server", "Metrics", "Logs", "Events", "Environment")


def core_tabs() -> TabRegistry:
    """The console's own tabs (other capabilities' tabs are tested with them)."""
    registry = TabRegistry()
    for spec in TABS.specs():
        if spec.title in CORE:
            registry.register(spec.title, spec.factory, spec.order)
    return registry


def in_line(work: Callable[[], object]) -> None:
    work()


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def ctx(agent: FakeAgent) -> PanelContext:
    return PanelContext(client=agent, run=in_line, secret=lambda: PASSWORD)


def states(widget: widgets.Widget) -> str:
    """Every synced value of a widget tree, as text (what a page or a saved notebook holds)."""
    seen: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, widgets.Widget):
            state = node.get_state()
            seen.append(json.dumps(_py_to_js(state, None), default=str))
            for value in state.values():
                walk(value)
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item)
        elif isinstance(node, str) and node.startswith("IPY_MODEL_"):
            walk(_instances.get(node[len("IPY_MODEL_") :]))

    walk(widget)
    return "\n".join(seen)


# ---- Server ------------------------------------------------------------------------------


def test_server_panel_shows_the_status_and_enables_what_makes_sense(
    ctx: PanelContext, agent: FakeAgent
) -> None:
    panel = ServerPanel(ctx)
    assert panel.refresh()
    assert "nx-server-state'>stopped" in panel.details.value
    assert not panel.buttons["start"].disabled
    assert panel.buttons["stop"].disabled and panel.buttons["restart"].disabled
    assert panel.hint.layout.display is None and "Press <b>Start</b>" in panel.hint.value

    agent.state, agent.pid, agent.restarts = ServerState.RUNNING, 4242, 2
    panel.refresh()
    assert panel.hint.layout.display == "none", "the hint goes once the server runs"
    html = panel.details.value
    for shown in ("running", "1.18.33", "4242", "1h 2m", "crash: pid 9 exited with signal 9"):
        assert shown in html
    assert "<span class='nx-server-restarts'>2</span>" in html
    assert panel.buttons["start"].disabled
    assert not panel.buttons["stop"].disabled and not panel.buttons["restart"].disabled


def test_stop_and_restart_ask_first(ctx: PanelContext, agent: FakeAgent) -> None:
    panel = ServerPanel(ctx)
    agent.state, agent.pid = ServerState.RUNNING, 100
    panel.refresh()
    panel.buttons["stop"].click()
    assert panel.confirm.layout.display is None and "Stop the server?" in panel.question.value
    assert agent.called("stop") == []
    panel.confirm.children[2].click()  # Cancel
    assert panel.confirm.layout.display == "none" and agent.called("stop") == []

    panel.buttons["restart"].click()
    assert "Restart the server?" in panel.question.value
    panel.confirm.children[1].click()  # Yes
    assert agent.called("restart") == [{"wait": True}]
    assert "nx-server-restarts'>1<" in panel.details.value
    assert "restarted" in panel.banner.widget.value


def test_start_runs_in_the_background_and_reports(ctx: PanelContext, agent: FakeAgent) -> None:
    started: list[Callable[[], object]] = []
    ctx.run = started.append  # hold the work, as a busy thread would
    panel = ServerPanel(ctx)
    panel.refresh()
    panel.buttons["start"].click()
    assert "Starting the server" in panel.banner.widget.value
    assert all(b.disabled for b in panel.buttons.values()), "no second action while one runs"
    assert agent.called("start") == []
    started.pop()()
    assert agent.called("start") == [{"wait": True}]
    assert "running" in panel.details.value and not panel.buttons["stop"].disabled


def test_a_failed_action_shows_a_banner_not_a_traceback(
    ctx: PanelContext, agent: FakeAgent
) -> None:
    panel = ServerPanel(ctx)
    panel.refresh()
    agent.fail = AgentError("port 4096 is in use by nginx", hint="stop nginx or change the port")
    panel.buttons["start"].click()
    text = panel.banner.widget.value
    assert "port 4096 is in use by nginx" in text and "stop nginx or change the port" in text
    assert "Traceback" not in text and panel.banner.widget.layout.display is None


def test_password_is_nowhere_until_asked(ctx: PanelContext) -> None:
    panel = ServerPanel(ctx)
    panel.refresh()
    assert PASSWORD not in states(panel.widget)
    assert "http://127.0.0.1:4096" in panel.endpoint.value and "<svg" in panel.qr.value
    assert "OPENCODE_SERVER_PASSWORD='********' opencode attach" in unescape(panel.commands.value)
    panel.reveal.value = True
    assert PASSWORD in panel.password.value and PASSWORD in states(panel.widget)
    assert f"OPENCODE_SERVER_PASSWORD={PASSWORD} opencode attach" in unescape(panel.commands.value)
    panel.reveal.value = False
    assert PASSWORD not in states(panel.widget)


def test_no_url_shown_carries_credentials(ctx: PanelContext) -> None:
    """The QR code holds the plain URL, password shown or not; no URL has a user:pw@ part."""
    panel = ServerPanel(ctx)
    panel.refresh()
    panel.reveal.value = True
    assert panel.qr.value == qr_svg("http://127.0.0.1:4096")
    shown = states(panel.widget)
    assert "http://127.0.0.1:4096" in shown
    assert not re.search(r"://[^/\s\"']*@", shown), "a URL with credentials is shown"
    assert "opencode run --attach http://127.0.0.1:4096" in unescape(panel.commands.value)
    assert "curl -u" in unescape(panel.commands.value) and "Authorization" in panel.commands.value


def test_an_unreadable_password_is_a_banner(agent: FakeAgent, tmp_path: Path) -> None:
    settings = load_settings({"NEXUS_HOME": str(tmp_path)})
    ctx = PanelContext(client=agent, run=in_line, secret=lambda: read_password(settings))
    panel = ServerPanel(ctx)
    panel.reveal.value = True
    assert "no password file" in panel.banner.widget.value
    assert panel.reveal.value is False


# ---- Metrics -----------------------------------------------------------------------------


def test_a_metrics_refresh_is_one_request_for_what_is_new(
    ctx: PanelContext, agent: FakeAgent
) -> None:
    panel = MetricsPanel(ctx)
    assert panel.refresh() and panel.refresh(), panel.banner.widget.value
    assert [c["count"] for c in agent.called("query_points_many")] == [len(queries_of("1h"))] * 2
    calls = agent.called("query_metrics")
    half = len(calls) // 2
    assert all(c["since"] is None for c in calls[:half]), "the first refresh reads whole"
    newest = NOW - SINCE_MARGIN
    assert all(c["since"] == pytest.approx(newest) for c in calls[half:]), "then what is new"
    (status,) = panel.kept.series["opencode_server_status"]
    assert len(status) == 60 and len(set(status.times)) == 60, "the overlap is not drawn twice"


def test_append_points_replaces_the_overlap_and_drops_what_left_the_range() -> None:
    old = [
        Points("m", "a=1", np.array([10.0, 20.0, 30.0]), np.array([1.0, 2.0, 3.0])),
        Points("m", "a=2", np.array([10.0, 20.0]), np.array([5.0, 6.0])),
    ]
    new = [Points("m", "a=1", np.array([30.0, 40.0]), np.array([3.5, 4.0]))]
    both = append_points(old, new, start=15.0)
    assert [(p.labels, p.times.tolist(), p.values.tolist()) for p in both] == [
        ("a=1", [20.0, 30.0, 40.0], [2.0, 3.5, 4.0]),
        ("a=2", [20.0], [6.0]),
    ]


def test_metrics_panel_fills_every_figure(ctx: PanelContext, agent: FakeAgent) -> None:
    panel = MetricsPanel(ctx)
    assert panel.refresh(), panel.banner.widget.value
    asked = {c["metric"] for c in agent.called("query_metrics")}
    assert asked == {*wanted_metrics(), REQUESTS}
    assert {c["start"] for c in agent.called("query_metrics")} == {"1h"}
    points = {c["metric"]: c["max_points"] for c in agent.called("query_metrics")}
    assert points["opencode_server_status"] < points["opencode_process_cpu_percent"]
    # The samples say up, the server is stopped now: the stat says what the Server tab says.
    assert panel.stats["server_status"].layout.annotations[0].text == "STOPPED"
    assert panel.stats["uptime"].layout.annotations[0].text == "-"
    agent.state = ServerState.RUNNING
    panel.refresh()
    assert panel.stats["server_status"].layout.annotations[0].text == "UP"
    assert panel.stats["restarts"].layout.title.text == "Starts"
    uptime = panel.stats["uptime"]
    assert uptime.layout.annotations[1].text == "orange: up less than 5 min"  # 42 s
    assert "green: up 5 min or more" in uptime.layout.annotations[1].hovertext, "all on hover"
    for key, fig in panel.series.items():
        lines = [t for t in fig.data if t.name != "restarts and crashes"]
        assert lines and all(len(t.y) for t in lines), key
    names = {t.name for t in panel.series["request_duration"].data}
    assert {"mean · health checks", "max · health checks"} <= names, "an hour: the rollups"
    panel.range.value = "15m"
    names = {t.name for t in panel.series["request_duration"].data if len(t.y)}
    assert names == {"p50 · health checks", "p95 · health checks"}, "15 minutes: raw quantiles"


def test_lines_break_where_nothing_was_sampled() -> None:
    times = np.concatenate([np.arange(0.0, 50.0, 5.0), np.arange(600.0, 650.0, 5.0)])
    frame = concat_frames(
        [
            tidy_frame("m", "a=1", times, np.ones(len(times))),
            tidy_frame("m", "a=2", np.arange(0.0, 100.0, 5.0), np.ones(20)),
        ]
    )
    broken = break_gaps(frame)
    one = broken[broken["labels"] == "a=1"]
    assert len(one) == len(times) + 1 and one["value"].isna().sum() == 1
    hole = one[one["value"].isna()]["time"].iloc[0]
    assert pd.Timestamp(45, unit="s", tz="UTC") < hole < pd.Timestamp(600, unit="s", tz="UTC")
    assert one["time"].is_monotonic_increasing
    assert broken[broken["labels"] == "a=2"]["value"].notna().all(), "no gap, no hole"


def test_operator_stops_are_not_marked_as_crashes(ctx: PanelContext, agent: FakeAgent) -> None:
    agent.journal = [
        Event(id=1, time=NOW - 60, kind="exit", reason="operator", pid=7, message="stopped"),
        Event(id=2, time=NOW - 30, kind="exit", reason="crash", pid=8, message="signal 9"),
    ]
    panel = MetricsPanel(ctx)
    panel.refresh()
    markers = next(t for t in panel.series["cpu"].data if t.name == "restarts and crashes")
    assert list(markers.text) == ["exit (crash): signal 9"]


def test_figure_times_reach_the_page_as_dates(ctx: PanelContext) -> None:
    panel = MetricsPanel(ctx)
    panel.refresh()
    line = next(t for t in panel.series["cpu"].data if t.name == "server")
    sent = json.dumps(_py_to_js(line.to_plotly_json(), None), default=str)
    assert f'"{time.strftime("%Y", time.gmtime(NOW))}-' in sent, "x must be dates, not numbers"


def test_long_ranges_read_rollups_and_redraw_the_lines(ctx: PanelContext, agent: FakeAgent) -> None:
    panel = MetricsPanel(ctx)
    panel.range.value = "15m"
    agent.calls.clear()
    panel.range.value = "7d"
    requests = [c for c in agent.called("query_metrics") if c["metric"] == REQUESTS]
    assert sorted(c.get("agg") for c in requests) == ["max", "mean"]
    assert all(c["start"] == "7d" for c in agent.called("query_metrics"))
    names = {t.name for t in panel.series["request_duration"].data}
    assert "p50 · health checks" not in names and "max · health checks" in names
    start, end = panel.series["cpu"].layout.xaxis.range
    assert (pd.Timestamp(end) - pd.Timestamp(start)).days == 7


def test_metrics_refresh_keeps_the_same_widgets(ctx: PanelContext) -> None:
    panel = MetricsPanel(ctx)
    panel.refresh()
    before = [id(t) for t in panel.series["connections"].data]
    panel.refresh()
    assert [id(t) for t in panel.series["connections"].data] == before


def test_figures_share_the_served_bundle(tmp_path: Path) -> None:
    assert asset_url(tmp_path, {"VOILA_BASE_URL": "/"}) is None  # not served here
    (tmp_path / ASSET).write_text("export default {}")
    assert asset_url(tmp_path, {}) is None  # not under Voila
    url = asset_url(tmp_path, {"VOILA_BASE_URL": "/base/"})
    assert url == f"/base/voila/files/{ASSET}"
    fig = figure_widget(go.Figure(), url)
    assert fig._esm == shim(url) and len(fig._esm) < 300
    plain = figure_widget(go.Figure(), "")
    assert len(plain._esm) > 1_000_000, "outside the console a figure carries plotly.js"
    assert fig._config["responsive"] and fig.layout.autosize


# ---- Logs, Events, Environment -----------------------------------------------------------


def test_errors_and_warnings_are_coloured_named_and_escaped() -> None:
    html = render_lines(
        [
            'timestamp=2026-12-03T23:00:04Z level=ERROR message="Failed <script>x</script>"',
            "timestamp=2026-12-03T23:00:05Z level=WARN message=slow",
            "WARNING disk at 91%",
            'timestamp=2026-12-03T23:00:06Z level=INFO message="no ERROR here"',
            "an error <b>",
        ]
    )
    lines = html.split("\n")
    assert lines[0].startswith("<div class='nx-log-view'><pre><span class='nx-log-error'>")
    assert "<span class='nx-sr'>error: </span>" in lines[0]
    assert "&lt;script&gt;x&lt;/script&gt;" in lines[0] and "<script>" not in html
    assert lines[1].startswith("<span class='nx-log-warning'><span class='nx-sr'>warning: ")
    assert lines[2].startswith("<span class='nx-log-warning'>")
    assert "nx-log" not in lines[3] and "nx-log" not in lines[4].removesuffix("</pre></div>")
    assert ".nx-log-error" in CSS and ".nx-sr" in CSS


def test_logs_follow_filter_and_escape(ctx: PanelContext, agent: FakeAgent) -> None:
    panel = LogsPanel(ctx)
    panel.refresh()
    assert "an error &lt;b&gt;" in panel.view.value
    panel.filter.value = "listening"
    assert agent.called("logs")[-1] == {"lines": 200, "contains": "listening"}
    assert "an error" not in panel.view.value
    panel.count.value = 1000
    assert agent.called("logs")[-1]["lines"] == 1000
    panel.follow.value = False
    assert not panel.live
    panel.filter.value = "x" * 201
    assert "200" in panel.banner.widget.value and "shorten" in panel.banner.widget.value


def test_events_are_read_incrementally_and_highlighted(ctx: PanelContext, agent: FakeAgent) -> None:
    agent.journal = [
        Event(id=1, time=NOW - 30, kind="start", pid=9, message="started"),
        Event(id=2, time=NOW - 20, kind="exit", reason="crash", pid=9, message="signal 9"),
    ]
    panel = EventsPanel(ctx)
    panel.refresh()
    agent.journal.append(Event(id=3, time=NOW - 10, kind="restart", reason="crash"))
    panel.refresh()
    assert agent.called("events")[-1]["after_id"] == 2
    assert [e.id for e in panel.events] == [1, 2, 3]
    html = panel.table.value
    assert html.index("restart") < html.index("signal 9"), "newest first"
    assert "class='nx-event-crash'" in html and "class='nx-event-restart'" in html
    panel.only_problems.value = True
    assert "started" not in panel.table.value


def test_highlight_rules() -> None:
    def event(kind: str, reason: str | None = None) -> Event:
        return Event(id=1, time=0, kind=kind, reason=reason)

    assert highlight(event("exit", "operator")) == "nx-event"
    assert highlight(event("hung", "hang")) == "nx-event-crash"
    assert highlight(event("fatal")) == "nx-event-crash"
    assert highlight(event("ready")) == "nx-event"
    assert "No events yet" in events_html([])


def test_environment_lists_settings_and_problems(agent: FakeAgent, tmp_path: Path) -> None:
    settings = load_settings({"NEXUS_HOME": str(tmp_path)})
    ctx = PanelContext(client=agent, settings=settings, run=in_line, problems=["X is bad"])
    panel = EnvironmentPanel(ctx)
    panel.refresh()
    assert "staging" in panel.profile.value
    assert "NEXUS_ALERT_WEBHOOK_TOKEN" in panel.table.value and "****" in panel.table.value
    assert "X is bad" in panel.problems.value
    assert "/srv/nexus" in panel.problems.value, "a console on another NEXUS_HOME is a problem"
    panel.filter.value = "webhook"
    assert "NEXUS_ENV" not in panel.table.value


def test_home_mismatch_is_silent_when_they_agree(tmp_path: Path) -> None:
    settings = load_settings({"NEXUS_HOME": str(tmp_path)})
    rows = [{"variable": "NEXUS_HOME", "value": str(tmp_path), "description": ""}]
    assert home_mismatch(settings, rows) == []


# ---- the console -------------------------------------------------------------------------


def test_console_refreshes_the_shown_tab_and_the_server(agent: FakeAgent) -> None:
    made = Console(agent, tabs=core_tabs(), secret=lambda: PASSWORD)
    made.ctx.run = in_line
    assert [s.title for s in made.specs][:2] == ["Server", "Metrics"]
    assert not made.mounted(1), "a tab goes on the page when first opened"
    made.tick()
    assert "agent connected" in made.agent.value
    assert agent.called("status") and not agent.called("query_metrics")
    made.tabs.selected_index = 1
    assert made.slots[1].children == (made.panels["Metrics"].widget,)
    assert agent.called("query_metrics"), "a selected tab is refreshed at once"
    lines = [t for t in made.panels["Metrics"].series["cpu"].data if t.name == "server"]  # type: ignore[attr-defined]
    assert lines and len(lines[0].y), "its data is in the figures before they reach the page"
    agent.calls.clear()
    made.tick()  # both just refreshed: nothing is due
    assert agent.calls == []
    for panel in made.panels.values():
        panel.last_refresh -= 60
    made.tick()
    assert agent.called("status") and agent.called("query_metrics") and not agent.called("logs")


def test_a_lost_agent_shows_and_the_console_recovers(agent: FakeAgent) -> None:
    made = Console(agent, tabs=core_tabs())
    made.refresh_all()
    agent.fail = AgentUnavailable(
        "no agent answers at http://127.0.0.1:1420 (ConnectError)",
        hint="start it with `nexus-ops agent start`",
    )
    made.refresh_all()
    assert "agent lost" in made.agent.value
    server = made.panels["Server"]
    assert isinstance(server, ServerPanel)
    assert "nexus-ops agent start" in server.banner.widget.value
    assert "unknown" in server.details.value and all(b.disabled for b in server.buttons.values())
    agent.fail = None
    made.refresh_all()
    assert "agent connected" in made.agent.value
    assert all(p.banner.widget.layout.display == "none" for p in made.panels.values())


def test_unexpected_errors_become_banners(agent: FakeAgent) -> None:
    made = Console(agent, tabs=core_tabs())
    agent.fail = ValueError("boom")
    made.refresh_all()
    text = made.panels["Logs"].banner.widget.value
    assert "unexpected ValueError: boom" in text and "console.log" in text


def test_a_registered_tab_joins_and_a_broken_one_says_why(agent: FakeAgent) -> None:
    class Hello(Panel[str]):
        title = "Hello"

        def build(self) -> widgets.Widget:
            return widgets.HTML()

        def fetch(self) -> str:
            return "hello"

        def show(self, data: str) -> None:
            self.body.value = data

    registry = TabRegistry()
    registry.register("Server", ServerPanel, order=10)
    registry.register("Hello", Hello, order=50)
    registry.register("Broken", "nexus_ops.ui.nowhere:Panel", order=60)
    made = Console(agent, tabs=registry)
    assert list(made.tabs.titles) == ["Server", "Hello", "Broken"]
    made.refresh_all()
    assert made.panels["Hello"].body.value == "hello"
    broken = made.panels["Broken"]
    assert isinstance(broken, BrokenPanel) and "cannot be loaded" in broken.banner.widget.value
    with pytest.raises(NexusOpsError):
        registry.register(" ", Hello)


def test_default_tabs_and_register_tab() -> None:
    titles = [s.title for s in TABS.specs()]
    assert titles[0] == "Server" and titles[-1] == "Environment"
    mine = [t for t in titles if t in CORE]
    assert mine == list(CORE), "the console's own tabs, in their order (others join between)"
    register_tab("Extra", "nexus_ops.ui.logs:LogsPanel", order=95)
    try:
        assert TABS.specs()[-1].title == "Extra"
    finally:
        TABS.unregister("Extra")


def test_invalid_settings_give_a_console_that_says_what_to_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEXUS_PROBE_TIMEOUT", "abc")
    monkeypatch.setenv("NEXUS_HOMEE", "/x")
    made = console(live=False)
    made.refresh_all()
    assert "settings invalid" in made.agent.value
    problems = made.panels["Environment"].problems.value  # type: ignore[attr-defined]
    assert "NEXUS_PROBE_TIMEOUT" in problems and "did you mean NEXUS_HOME" in problems
    assert "NEXUS_PROBE_TIMEOUT" in made.panels["Server"].banner.widget.value


def test_the_header_says_demo_only_for_a_demo(agent: FakeAgent, tmp_path: Path) -> None:
    def header_text(settings: dict[str, str]) -> str:
        made = Console(agent, load_settings({"NEXUS_HOME": str(tmp_path), **settings}))
        return " ".join(str(getattr(w, "value", "")) for w in made.widget.children[1].children)

    demo = header_text({"NEXUS_DEMO": "true"})
    assert ">DEMO</span>" in demo and "scripted model, synthetic workload" in demo
    assert "DEMO" not in header_text({})


def test_console_displays_as_its_widget(agent: FakeAgent) -> None:
    made = Console(agent)
    bundle = made._repr_mimebundle_()
    assert made.widget.model_id in json.dumps(bundle, default=str)


# ---- live refresh ------------------------------------------------------------------------


def test_page_watch_tells_an_open_page_from_a_closed_one() -> None:
    watch = PageWatch(beat_every=5)
    woken: list[bool] = []
    watch.listeners.append(lambda: woken.append(True))
    assert not watch.alive(now=100.0)
    watch._on_msg(watch, {"beat": 1}, [])
    assert woken == [True] and watch.alive()
    watch.beat(now=100.0)
    assert watch.alive(now=114.0) and not watch.alive(now=116.0)
    before = watch.nudge
    watch.resize_figures()
    assert watch.nudge == before + 1


def test_refresher_ticks_only_while_watched_and_stops() -> None:
    watched = {"now": False}
    ticks: list[float] = []
    refresher = Refresher(lambda: ticks.append(time.monotonic()), 0.05, lambda: watched["now"])
    refresher.start()
    try:
        time.sleep(0.3)
        assert ticks == []
        watched["now"] = True
        refresher.wake()
        deadline = time.monotonic() + 5
        while len(ticks) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(ticks) >= 3
    finally:
        refresher.stop()
    assert not refresher.running
    count = len(ticks)
    time.sleep(0.2)
    assert len(ticks) == count


def test_refresher_survives_a_failing_tick() -> None:
    calls: list[int] = []

    def tick() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    refresher = Refresher(tick, 0.02).start()
    try:
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        refresher.stop()
    assert len(calls) >= 2


def test_a_change_during_a_refresh_is_shown_after_it(ctx: PanelContext, agent: FakeAgent) -> None:
    panel = LogsPanel(ctx)
    original = agent.logs

    def slow_logs(lines: int = 200, contains: str | None = None) -> list[str]:
        if contains is None:
            panel.refresh()  # a second refresh asked while the first one runs
            panel.filter.value = "error"
        return original(lines, contains)

    agent.logs = slow_logs  # type: ignore[method-assign]
    panel.refresh()
    assert agent.called("logs")[-1]["contains"] == "error"
    assert "listening" not in panel.view.value


def test_alert_values_are_written_in_their_metric_unit_and_no_webhooks_says_what_to_do() -> None:
    from nexus_ops.alerts import RuleStatus
    from nexus_ops.alerts.rules import AlertRule
    from nexus_ops.ui.alerts import receivers_html, rules_html

    memory = AlertRule(name="Mem", metric="opencode_process_resident_memory_bytes", value=3e9)
    latency = AlertRule(name="Slow", metric="opencode_request_duration_seconds", value=2)
    rows = rules_html(
        [
            RuleStatus(rule=memory, expression=memory.describe(), state="pending", value=3.99987e8),
            RuleStatus(rule=latency, expression=latency.describe(), state="inactive", value=0.0425),
        ]
    )
    assert "381.5 MiB" in rows and "42 ms" in rows
    assert "3.99987e+08" not in rows and "0.0425" not in rows
    empty = receivers_html([])
    assert "NEXUS_ALERT_WEBHOOK_URLS=https://hooks.example.com/" in empty
    assert "restart the agent" in empty and "docs/alerts.md" in empty


def test_a_notice_without_a_summary_shows_its_condition_for_people(tmp_path: Path) -> None:
    from nexus_ops.alerts import Notifier
    from nexus_ops.alerts.rules import AlertRule
    from nexus_ops.store import Database, Journal
    from nexus_ops.ui.alerts import recent_html

    rule = AlertRule(name="Mem", metric="opencode_process_resident_memory_bytes", value=3221225472)
    notifier = Notifier([], Journal(Database(tmp_path / "nexus.db")))
    notice = notifier.send(rule, "firing", 3.5e9, None)
    assert notice.summary == "opencode_process_resident_memory_bytes > 3 GiB"
    html = recent_html([notice])
    assert "&gt; 3 GiB" in html and "3221225472" not in html
    told = notifier.send(rule.model_copy(update={"summary": "Memory is high"}), "firing", 1, None)
    assert "Memory is high" in recent_html([told])


def test_alert_conditions_write_thresholds_for_people() -> None:
    from nexus_ops.alerts import RuleStatus
    from nexus_ops.alerts.rules import AlertRule
    from nexus_ops.ui.alerts import rules_html

    rule = AlertRule(name="Mem", metric="opencode_process_resident_memory_bytes", value=3221225472)
    html = rules_html([RuleStatus(rule=rule, expression=rule.describe(), state="inactive")])
    assert (
        "&gt; 3 GiB" in html
        and "title='opencode_process_resident_memory_bytes &gt; 3221225472'" in html
    )
    cpu = AlertRule(name="Cpu", metric="opencode_process_cpu_percent", value=90)
    slow = AlertRule(name="Slow", metric="opencode_request_duration_seconds", value=2.5)
    html = rules_html([RuleStatus(rule=r, expression="", state="inactive") for r in (cpu, slow)])
    assert "&gt; 90%" in html and "&gt; 2.5 s" in html
    starts = AlertRule(name="Loop", kind="restart_rate", value=3, window=900)
    assert "more than 3 starts" in rules_html(
        [RuleStatus(rule=starts, expression="", state="inactive")]
    )
    down = AlertRule(name="Down", metric="opencode_server_status", op="<", value=1.0)
    html = rules_html([RuleStatus(rule=down, expression="", state="inactive", value=1.0)])
    assert "opencode_server_status &lt; 1<" in html and ">1<" in html, "a status is 0 or 1"


def test_the_range_starts_at_the_first_sample_when_the_data_is_younger() -> None:
    from nexus_ops.ui.metrics import MetricsData, window_of

    now = 1_800_000_000.0
    young = tidy_frame("opencode_server_status", "", np.array([now - 120, now]), np.ones(2))
    start, end = (pd.Timestamp(t) for t in window_of(MetricsData("1h", {"m": young}), now))
    assert (end - start).total_seconds() == pytest.approx(120)
    old = tidy_frame("opencode_server_status", "", np.array([now - 7200, now]), np.ones(2))
    start, end = (pd.Timestamp(t) for t in window_of(MetricsData("1h", {"m": old}), now))
    assert (end - start).total_seconds() == pytest.approx(3600)
    picked = window_of(MetricsData("1h", {"m": young}), now, fit=False)
    assert (pd.Timestamp(picked[1]) - pd.Timestamp(picked[0])).total_seconds() == pytest.approx(
        3600
    )


def test_backups_and_the_server_write_sizes_ages_and_durations_for_people(
    ctx: PanelContext,
) -> None:
    schedule = schedule_html(
        {
            "schedule": "0 3 * * *",
            "next_run": time.time() + 3600,
            "last_success": time.time() - 7530,
            "last_size": 3.5 * 2**20,
            "last_duration": 0.42,
        }
    )
    assert "(2h 5m ago)" in schedule and "3.5 MiB" in schedule and "420 ms" in schedule
    info = BackupInfo(
        id="b1",
        kind="scheduled",
        created=time.time(),
        size=1536,
        files=12345,
        parts=["data"],
        opencode_version="1.18.33",
        host="h",
        sessions=2,
    )
    table = backups_html([info])
    assert "1.5 KiB" in table and "12,345" in table
    status = ServerStatus(
        state=ServerState.BACKOFF, desired="running", port=4096, next_restart_in=0.25
    )
    assert "250 ms" in ServerPanel(ctx)._details_html(status)


def test_usage_shows_each_model_the_tokens_per_day_and_the_busiest_sessions(
    ctx: PanelContext, agent: FakeAgent
) -> None:
    panel = UsagePanel(ctx)
    assert panel.refresh()
    assert agent.called("usage") == [{"sessions": 10}]
    models = unescape(panel.models.value)
    for shown in ("scripted/m1", "7,181", "23", "7.2730"):
        assert shown in models, shown
    assert "nx-event-crash" in panel.models.value  # a model with provider errors stands out
    [bars] = panel.days.data
    assert bars.name == "scripted/m1"
    assert list(bars.x) == ["2026-12-03", "2026-12-04"]
    assert list(bars.y) == [100.0, 7081.0 + 23.0]
    assert "&lt;b&gt;Greeting&lt;/b&gt;" in panel.sessions.value  # escaped
    assert "7,209" in panel.sessions.value
    assert "bash" in panel.tools.value and ">3<" in panel.tools.value
    assert "prompts in flight" in panel.state.value and ">2<" in panel.state.value
    widget = panel.days
    assert panel.refresh() and panel.days is widget and len(panel.days.data) == 1


def test_usage_says_when_nothing_is_counted_or_the_stream_is_down(ctx: PanelContext) -> None:
    panel = UsagePanel(ctx)
    panel.show(
        {"connected": True, "synced": True, "models": [], "tools": [], "days": []}
        | {"sessions": []}
    )
    start, end = panel.days.layout.xaxis.range
    assert pd.Timestamp(end) - pd.Timestamp(start) == pd.Timedelta(days=7)  # a week, not years
    assert "No assistant message yet" in models_html([])
    assert "may lag" in state_html({"connected": False, "in_flight": 0})
    assert "counting" in state_html({"connected": True, "synced": False, "in_flight": 0})
