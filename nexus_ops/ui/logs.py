"""The Logs panel: the tail of the server's log, followed live or frozen, with a filter.

The agent filters (``contains``) and masks secrets; the panel shows the newest
line at the bottom and stays scrolled there while it follows. ERROR and WARN lines
are coloured, and begin with a word only screen readers read ("error:", "warning:").

>>> render_lines(["a <b>", "c"])
"<div class='nx-log-view'><pre>a &lt;b&gt;\\nc</pre></div>"
>>> level_of("timestamp=2026-12-03T23:00:04Z level=ERROR message=x")
'error'
"""

from __future__ import annotations

import html
import re

import ipywidgets as widgets

from nexus_ops.errors import NexusOpsError
from nexus_ops.ui.base import Panel, PanelContext

LINE_CHOICES = (100, 200, 500, 1000)
MAX_FILTER = 200  # what the agent accepts
# The level of a line: OpenCode's ``level=ERROR`` (any case), or an upper-case
# ``ERROR``/``WARN`` as its first or second word (after a time); the level shown.
LEVEL = re.compile(
    r"(?:^|\s)level=(?i:(error|fatal|warn|warning))\b|^(?:\S+\s+)?(ERROR|FATAL|WARN|WARNING)\b"
)
LEVELS = {"error": "error", "fatal": "error", "warn": "warning", "warning": "warning"}


def level_of(line: str) -> str | None:
    """``"error"``, ``"warning"`` or None (any other level)."""
    found = LEVEL.search(line)
    return LEVELS[(found.group(1) or found.group(2)).lower()] if found else None


def render_line(line: str) -> str:
    """One escaped line; an error or warning in a span of its level's colour."""
    level = level_of(line)
    text = html.escape(line)
    if level is None:
        return text
    return f"<span class='nx-log-{level}'><span class='nx-sr'>{level}: </span>{text}</span>"


def render_lines(lines: list[str]) -> str:
    """The log lines as HTML (column-reverse keeps the view scrolled to the newest)."""
    text = "\n".join(render_line(line) for line in lines) if lines else "(no lines)"
    return f"<div class='nx-log-view'><pre>{text}</pre></div>"


class LogsPanel(Panel[list[str]]):
    """The server's log: follow on or off, how many lines, and a text filter.

    >>> # panel = LogsPanel(ctx); panel.filter.value = "error"; panel.refresh()
    """

    title = "Logs"
    interval = 2.0
    css = "nx-logs"

    def __init__(self, ctx: PanelContext) -> None:
        self.lines: list[str] = []
        super().__init__(ctx)

    def build(self) -> widgets.Widget:
        self.follow = widgets.ToggleButton(value=True, description="Follow", icon="play")
        self.follow.add_class("nx-log-follow")
        self.filter = widgets.Text(placeholder="only lines containing ...", description="Filter")
        self.filter.add_class("nx-log-filter")
        self.count = widgets.Dropdown(options=LINE_CHOICES, value=200, description="Lines")
        self.count.layout.width = "160px"
        self.count.add_class("nx-log-lines")
        self.follow.observe(self.guarded(self.follow_changed), names="value")
        self.filter.observe(self.guarded(self.settings_changed), names="value")
        self.count.observe(self.guarded(self.settings_changed), names="value")
        self.view = widgets.HTML(render_lines([]), layout=widgets.Layout(width="100%"))
        self.view.add_class("nx-log")
        controls = widgets.HBox([self.follow, self.filter, self.count])
        return widgets.VBox([controls, self.view])

    @property
    def live(self) -> bool:
        """Refreshed by the console's live loop only while following."""
        return bool(self.follow.value)

    def follow_changed(self, change: object = None) -> None:
        self.follow.icon = "play" if self.follow.value else "pause"
        if self.follow.value:
            self.in_background(self.refresh)

    def settings_changed(self, change: object = None) -> None:
        self.in_background(self.refresh)

    def fetch(self) -> list[str]:
        contains = str(self.filter.value).strip()
        if len(contains) > MAX_FILTER:
            raise NexusOpsError(
                f"the filter is {len(contains)} characters long; the agent takes {MAX_FILTER}",
                hint="shorten the filter",
            )
        return self.ctx.client.logs(int(self.count.value), contains or None)

    def show(self, data: list[str]) -> None:
        if data != self.lines:
            self.lines = data
            self.view.value = render_lines(data)
