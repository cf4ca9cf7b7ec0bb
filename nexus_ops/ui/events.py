"""The Events panel: the agent's journal as a table, restarts and crashes highlighted.

The first refresh reads the newest :data:`KEEP` events; later ones ask only for
events after the last id seen.

>>> from nexus_ops.models import Event
>>> highlight(Event(id=1, time=0, kind="exit", reason="crash"))
'nx-event-crash'
>>> highlight(Event(id=2, time=0, kind="exit", reason="operator"))
'nx-event'
"""

from __future__ import annotations

import time

import ipywidgets as widgets

from nexus_ops.models import PLANNED_EXITS, Event
from nexus_ops.ui.base import Panel, PanelContext, table_html
from nexus_ops.ui.style import esc

KEEP = 200
PROBLEMS = {"hung", "fatal", "start_failed", "memory_limit", "drain_timeout", "prompt_cut"}


def highlight(event: Event) -> str:
    """The row class of an event: restarts orange, crashes and hangs red."""
    if event.kind == "restart":
        return "nx-event-restart"
    if event.kind in PROBLEMS or (event.kind == "exit" and event.reason not in PLANNED_EXITS):
        return "nx-event-crash"
    return "nx-event"


def events_html(events: list[Event]) -> str:
    """Newest first: time, kind, reason, pid, message."""
    if not events:
        return "<p class='nx-muted'>No events yet.</p>"
    newest_first = list(reversed(events))
    rows = [
        [
            esc(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))),
            f"<span class='nx-kind'>{esc(e.kind)}</span>",
            esc(e.reason or ""),
            esc(e.pid or ""),
            esc(e.message),
        ]
        for e in newest_first
    ]
    classes = [highlight(e) for e in newest_first]
    return table_html(
        ["time", "event", "reason", "pid", "message"], rows, "nx-events-table", classes
    )


class EventsPanel(Panel[list[Event]]):
    """The journal: starts, exits, restarts and why; optionally only the problems.

    >>> # panel = EventsPanel(ctx); panel.refresh(); panel.events[-1].kind
    """

    title = "Events"
    interval = 3.0
    css = "nx-events"

    def __init__(self, ctx: PanelContext) -> None:
        self.events: list[Event] = []
        super().__init__(ctx)

    def build(self) -> widgets.Widget:
        self.only_problems = widgets.Checkbox(
            value=False, description="Only restarts and crashes", indent=False
        )
        self.only_problems.add_class("nx-events-problems")
        self.only_problems.observe(self.guarded(self._redraw), names="value")
        self.table = widgets.HTML(events_html([]))
        self.table.add_class("nx-events-view")
        return widgets.VBox([self.only_problems, self.table])

    def fetch(self) -> list[Event]:
        after = self.events[-1].id if self.events else None
        return self.ctx.client.events(limit=KEEP, after_id=after)

    def show(self, data: list[Event]) -> None:
        if not data:
            return
        self.events = (self.events + data)[-KEEP:]
        self._redraw()

    def shown(self) -> list[Event]:
        if not self.only_problems.value:
            return self.events
        return [e for e in self.events if highlight(e) != "nx-event"]

    def _redraw(self, change: object = None) -> None:
        html = events_html(self.shown())
        if html != self.table.value:
            self.table.value = html
