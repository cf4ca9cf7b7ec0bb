"""What every console panel shares: the agent it talks to, a banner for errors, a refresh.

A panel fetches (network, off the kernel's main thread) and then shows (widget
updates, under the console's lock). An error of the agent or the server never
reaches the page as a traceback: :meth:`Panel.refresh` catches it and the
panel's banner says what happened and what to do.

>>> from nexus_ops.errors import AgentUnavailable
>>> banner = Banner()
>>> banner.show(AgentUnavailable("no agent answers", hint="start it"))
>>> "start it" in banner.widget.value
True
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import ipywidgets as widgets
import pandas as pd

from nexus_ops.alerts import AlertsView
from nexus_ops.config import Settings
from nexus_ops.errors import AgentUnavailable, NexusOpsError
from nexus_ops.metrics.frames import Points
from nexus_ops.models import ActionResult, Event, ServerStatus
from nexus_ops.upgrade.record import OperationRecord

log = logging.getLogger(__name__)

T = TypeVar("T")


class AgentLike(Protocol):
    """What the panels ask of the agent: :class:`nexus_ops.client.AgentClient` has it all."""

    def status(self) -> ServerStatus: ...

    def start(self, wait: bool = True) -> ActionResult: ...

    def stop(self) -> ActionResult: ...

    def restart(self, wait: bool = True) -> ActionResult: ...

    def upgrade_status(self) -> dict[str, Any]: ...

    def upgrade(
        self, version: str | None = None, dry_run: bool = False, probation: float | None = None
    ) -> dict[str, Any]: ...

    def rollback(self) -> OperationRecord: ...

    def events(
        self,
        since: float | None = None,
        kinds: list[str] | None = None,
        limit: int = 200,
        after_id: int | None = None,
    ) -> list[Event]: ...

    def logs(self, lines: int = 200, contains: str | None = None) -> list[str]: ...

    def config(self) -> dict[str, Any]: ...

    def alerts(self) -> AlertsView: ...

    def usage(self, sessions: int = 10) -> dict[str, Any]: ...

    def query_metrics(
        self,
        metric: str,
        labels: Mapping[str, str] | str | None = None,
        start: str | float | datetime = "1h",
        end: str | float | datetime = "now",
        max_points: int = 2000,
        resolution: str = "auto",
        method: str = "minmax",
        agg: str = "mean",
        since: float | None = None,
    ) -> pd.DataFrame: ...

    def query_points_many(self, queries: Sequence[Mapping[str, Any]]) -> list[list[Points]]: ...


def run_in_thread(work: Callable[[], object]) -> None:
    """Run ``work`` in a daemon thread, so that a slow agent never blocks the kernel."""
    threading.Thread(target=work, name="nexus-console-work", daemon=True).start()


def no_secret() -> str:
    raise NexusOpsError(
        "this console was given no way to read the server's password",
        hint="open the console with `nexus-ops console` on the agent's host",
    )


@dataclass
class PanelContext:
    """What a panel is given: the agent, the settings, and how to work off the main thread.

    ``secret`` reads the server's password, only when an operator asks to see it;
    ``problems`` are what was wrong with the console's own settings.
    """

    client: AgentLike
    settings: Settings | None = None
    run: Callable[[Callable[[], object]], None] = run_in_thread
    secret: Callable[[], str] = no_secret
    problems: list[str] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)


class Banner:
    """A strip at the top of a panel: an error with what to do, or a short note.

    Hidden while there is nothing to say.
    """

    def __init__(self) -> None:
        self.widget = widgets.HTML(layout=widgets.Layout(display="none"))
        self.widget.add_class("nx-banner")
        self.error: NexusOpsError | None = None
        self.expires: float | None = None

    def show(self, error: NexusOpsError) -> None:
        """Show an error of nexus-ops: its message and its hint."""
        self.error = error
        lost = isinstance(error, AgentUnavailable)
        title = "The agent is not answering" if lost else "Something went wrong"
        hint = (
            f"<div class='nx-hint'>What to do: {html.escape(error.hint)}</div>"
            if error.hint
            else ""
        )
        self._set(
            "error",
            f"<b>{title}:</b> <span class='nx-message'>{html.escape(error.message)}</span>{hint}",
        )

    def note(self, text: str, level: str = "info", ttl: float | None = None) -> None:
        """A message that is not an error (``info``, ``busy``, ``ok`` or ``error``);
        gone after ``ttl`` seconds (see :meth:`expire`) when one is given."""
        self.error = None
        self.expires = None if ttl is None else time.monotonic() + ttl
        self._set(level, html.escape(text))

    def expire(self, now: float | None = None) -> None:
        """Clear a note whose time is up."""
        now = time.monotonic() if now is None else now
        if self.expires is not None and now >= self.expires:
            self.clear()

    def clear(self) -> None:
        self.error = None
        self.expires = None
        if self.widget.layout.display != "none":
            with self.widget.hold_sync():
                self.widget.value = ""
                self.widget.layout.display = "none"

    def _set(self, level: str, body: str) -> None:
        value = f"<div class='nx-banner-{level}'>{body}</div>"
        with self.widget.hold_sync():
            self.widget.value = value
            self.widget.layout.display = None


def unexpected(exc: Exception) -> NexusOpsError:
    """An error we did not foresee, as a banner can show it (the traceback goes to the log)."""
    log.error("console: unexpected error", exc_info=exc)
    return NexusOpsError(
        f"unexpected {type(exc).__name__}: {exc}",
        hint="try again; if it persists, read the console's log ($NEXUS_HOME/logs/console.log "
        "under `nexus-ops console`) and report it",
    )


class Panel(Generic[T]):
    """Base of the console's panels: a banner over a body, refreshed from the agent.

    Subclasses set ``title`` and ``interval`` (seconds between live refreshes) and
    implement :meth:`build` (the body's widgets), :meth:`fetch` (ask the agent;
    runs in a background thread) and :meth:`show` (update the widgets).

    >>> class Hello(Panel[str]):
    ...     title = "Hello"
    ...     def build(self): return widgets.HTML()
    ...     def fetch(self): return "hi"
    ...     def show(self, data): self.body.value = data
    >>> panel = Hello(PanelContext(client=None))  # doctest: +SKIP
    """

    title = ""
    interval = 5.0
    css = ""
    # Refreshed on every live tick even when its tab is not shown (the console's
    # header shows whether the agent answers from it).
    always = False

    @property
    def live(self) -> bool:
        """Whether the live loop refreshes it now (a panel may pause itself)."""
        return True

    def __init__(self, ctx: PanelContext) -> None:
        self.ctx = ctx
        self.banner = Banner()
        self._refreshing = threading.Lock()
        self._again = False
        self.last_refresh = 0.0
        self.body = self.build()
        self.widget = widgets.VBox([self.banner.widget, self.body])
        self.widget.add_class("nx-panel")
        if self.css:
            self.widget.add_class(self.css)

    def build(self) -> widgets.Widget:
        raise NotImplementedError

    def fetch(self) -> T:
        raise NotImplementedError

    def show(self, data: T) -> None:
        raise NotImplementedError

    def refresh(self) -> bool:
        """Fetch and show; on an error show the banner instead. False when it failed.

        Asked while another thread refreshes, it returns at once and that thread
        refreshes once more when done (so the newest filter or range is shown).
        """
        if not self._refreshing.acquire(blocking=False):
            self._again = True
            return True
        try:
            while True:
                self._again = False
                ok = self._refresh()
                if not self._again:
                    return ok
        finally:
            self.last_refresh = time.monotonic()
            self._refreshing.release()

    def _refresh(self) -> bool:
        try:
            data = self.fetch()
        except NexusOpsError as exc:
            with self.ctx.lock:
                self.banner.show(exc)
                self.failed(exc)
            return False
        except Exception as exc:
            with self.ctx.lock:
                self.banner.show(unexpected(exc))
            return False
        with self.ctx.lock:
            if self.banner.error is not None:
                self.banner.clear()
            self.banner.expire()
            try:
                self.show(data)
            except Exception as exc:
                self.banner.show(unexpected(exc))
                return False
        return True

    def failed(self, error: NexusOpsError) -> None:
        """Called (under the lock) when a refresh failed; the banner already shows it."""

    def guarded(self, action: Callable[[], object]) -> Callable[..., None]:
        """A widget callback that shows errors in the banner instead of raising them."""

        def callback(*_args: object) -> None:
            try:
                action()
            except NexusOpsError as exc:
                with self.ctx.lock:
                    self.banner.show(exc)
            except Exception as exc:
                with self.ctx.lock:
                    self.banner.show(unexpected(exc))

        return callback

    def in_background(self, action: Callable[[], object]) -> None:
        """Run ``action`` off the kernel's main thread, its errors shown in the banner."""
        self.ctx.run(self.guarded(action))

    def close(self) -> None:
        """Release what the panel holds (widgets are closed by the console)."""


def table_html(
    headers: list[str] | None,
    rows: list[list[str]],
    css: str,
    row_classes: list[str] | None = None,
) -> str:
    """An HTML table of already escaped cells (no header row when ``headers`` is None).

    A table with a header is shown on a phone as one card a row, each cell labelled
    with its column's name (``data-label``, see :mod:`nexus_ops.ui.style`).

    >>> table_html(["pid"], [["7"]], "nx-x").split("<tbody>")[1]
    "<tr class=''><td data-label='pid'>7</td></tr></tbody></table>"
    """
    head = "".join(f"<th>{h}</th>" for h in headers or [])
    thead = f"<thead><tr>{head}</tr></thead>" if headers else ""
    labels = (
        [" data-label='" + h.replace("'", "&#x27;") + "'" for h in headers] if headers else None
    )
    classes = row_classes or [""] * len(rows)
    body = "".join(
        f"<tr class='{cls}'>" + "".join(_cells(row, labels)) + "</tr>"
        for row, cls in zip(rows, classes, strict=True)
    )
    cards = "nx-cards " if headers else ""
    return f"<table class='nx-table {cards}{css}'>{thead}<tbody>{body}</tbody></table>"


def _cells(row: list[str], labels: list[str] | None) -> list[str]:
    if labels is None:
        return [f"<td>{cell}</td>" for cell in row]
    return [f"<td{label}>{cell}</td>" for cell, label in zip(row, labels, strict=False)]
