"""The Usage panel: what the models cost, per model, per day, and in which sessions.

The numbers are the agent's (``GET /api/v1/usage``): totals per provider and model,
tokens per day (UTC) and model as a stacked bar chart, the busiest sessions by
tokens, and the tool calls.

>>> models_html([])
"<p class='nx-muted nx-usage-none'>No assistant message yet.</p>"
"""

from __future__ import annotations

import time
from typing import Any

import ipywidgets as widgets

from nexus_ops.metrics import figures
from nexus_ops.metrics.catalogue import format_value
from nexus_ops.ui.base import Panel, table_html
from nexus_ops.ui.figurewidget import figure_widget
from nexus_ops.ui.style import esc

KINDS = ("input", "output", "reasoning", "cache_read", "cache_write")


def _count(value: float) -> str:
    return esc(format_value(value, "count"))


def _cost(value: float) -> str:
    return esc(f"{value:,.4f}")


def models_html(models: list[dict[str, Any]]) -> str:
    """Tokens by kind, cost, assistant messages and provider errors of each model."""
    if not models:
        return "<p class='nx-muted nx-usage-none'>No assistant message yet.</p>"
    rows = [
        [
            f"<b>{esc(row['provider'])}/{esc(row['model'])}</b>",
            *(_count(row["tokens"][kind]) for kind in KINDS),
            _cost(row["cost"]),
            _count(row["messages"]),
            _count(row["errors"]),
        ]
        for row in models
    ]
    headers = ["model", *(k.replace("_", " ") for k in KINDS), "cost", "messages", "errors"]
    classes = ["nx-event-crash" if row["errors"] else "nx-event" for row in models]
    return table_html(headers, rows, "nx-usage-models", classes)


def sessions_html(sessions: list[dict[str, Any]]) -> str:
    """The busiest sessions, most tokens first."""
    if not sessions:
        return "<p class='nx-muted'>No session has used a model yet.</p>"
    rows = [
        [
            esc(s["title"] or s["id"]),
            _count(s["tokens"]),
            _cost(s["cost"]),
            _count(s["messages"]),
            esc(time.strftime("%Y-%m-%d %H:%M", time.localtime(s["updated"]))),
            f"<code>{esc(s['id'])}</code>",
        ]
        for s in sessions
    ]
    headers = ["session", "tokens", "cost", "messages", "last update", "id"]
    return table_html(headers, rows, "nx-usage-sessions")


def tools_html(tools: list[dict[str, Any]]) -> str:
    if not tools:
        return "<p class='nx-muted'>No tool call yet.</p>"
    rows = [[esc(t["tool"]), esc(t["outcome"]), _count(t["calls"])] for t in tools]
    classes = ["nx-event-crash" if t["outcome"] == "error" else "nx-event" for t in tools]
    return table_html(["tool", "outcome", "calls"], rows, "nx-usage-tools", classes)


def state_html(usage: dict[str, Any]) -> str:
    """Whether the counts are live, and the prompts in flight."""
    if not usage.get("connected"):
        state = "not following the server's events (is it running?): the counts may lag"
    elif not usage.get("synced"):
        state = "counting the server's sessions..."
    else:
        state = "live"
    return (
        f"<span class='nx-muted nx-usage-state'>{esc(state)} · prompts in flight: "
        f"<b class='nx-usage-in-flight'>{_count(usage.get('in_flight', 0))}</b></span>"
    )


class UsagePanel(Panel[dict[str, Any]]):
    """Usage of the models, refreshed every few seconds.

    >>> # panel = UsagePanel(ctx); panel.refresh(); panel.models.value
    """

    title = "Usage"
    interval = 5.0
    css = "nx-usage"

    def build(self) -> widgets.Widget:
        self.state = widgets.HTML()
        self.models = widgets.HTML(models_html([]))
        self.models.add_class("nx-usage-models-box")
        self.days = figure_widget(figures.usage_figure())
        self.days.add_class("nx-usage-days")
        days = widgets.Box([self.days], layout=widgets.Layout(width="100%", min_width="0"))
        self.sessions = widgets.HTML()
        self.sessions.add_class("nx-usage-sessions-box")
        self.tools = widgets.HTML()
        self.tools.add_class("nx-usage-tools-box")
        sections = [
            widgets.HTML(f"<div class='nx-section'>{t}</div>")
            for t in ("Busiest sessions (by tokens)", "Tool calls")
        ]
        return widgets.VBox(
            [
                self.state,
                self.models,
                days,
                sections[0],
                self.sessions,
                sections[1],
                self.tools,
            ]
        )

    def fetch(self) -> dict[str, Any]:
        return self.ctx.client.usage()

    def show(self, data: dict[str, Any]) -> None:
        for widget, html in (
            (self.state, state_html(data)),
            (self.models, models_html(data["models"])),
            (self.sessions, sessions_html(data["sessions"])),
            (self.tools, tools_html(data["tools"])),
        ):
            if widget.value != html:
                widget.value = html
        figures.update_usage(self.days, data["days"])
