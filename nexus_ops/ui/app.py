"""The console: a header, the registered tabs, and the live refresh that drives them.

``console()`` is all the Voila notebook (or a JupyterLab cell) calls. Every tab's
panel is made at once; its widgets go on the page when the tab is first opened
(the Server tab at once). A background thread refreshes the shown tab (and the
Server panel, which tells whether the agent answers) while a page shows the
console; a tab is also refreshed when selected.

>>> # from nexus_ops.ui import console; console()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import ipywidgets as widgets

from nexus_ops.client import AgentClient
from nexus_ops.config import Settings, load_settings
from nexus_ops.errors import AgentUnavailable, ConfigError, NexusOpsError
from nexus_ops.paths import Layout
from nexus_ops.ui.base import AgentLike, Panel, PanelContext, no_secret, unexpected
from nexus_ops.ui.live import PageWatch, Refresher
from nexus_ops.ui.registry import TABS, TabRegistry, TabSpec
from nexus_ops.ui.style import esc, light, style_widget


class BrokenPanel(Panel[None]):
    """Stands in for a tab whose panel could not be made: it shows why."""

    def __init__(self, ctx: PanelContext, title: str, error: NexusOpsError) -> None:
        self.title = title
        super().__init__(ctx)
        self.banner.show(error)

    def build(self) -> widgets.Widget:
        return widgets.HTML()

    def fetch(self) -> None:
        return None

    def show(self, data: None) -> None:
        """Nothing to show but the banner."""

    def refresh(self) -> bool:
        return False  # nothing to ask; the banner stays

    @property
    def live(self) -> bool:
        return False


class Console:
    """The whole console for one agent; display it (it is its own widget's view).

    >>> # c = Console(AgentClient.from_settings(settings), settings); c.refresh_all(); c
    """

    def __init__(
        self,
        client: AgentLike,
        settings: Settings | None = None,
        *,
        tabs: TabRegistry | None = None,
        secret: Callable[[], str] | None = None,
        problems: Iterable[str] = (),
        interval: float | None = None,
        agent_url: str = "",
    ) -> None:
        self.ctx = PanelContext(
            client, settings, secret=secret or no_secret, problems=list(problems)
        )
        self.agent_url = agent_url or (settings.agent_base_url if settings else "")
        self.specs: list[TabSpec] = (tabs or TABS).specs()
        self.panels: dict[str, Panel[Any]] = {}
        # What a tab shows until its panel is on the page.
        self.loading = widgets.HTML("<p class='nx-muted'>Loading ...</p>")
        self.slots = [
            widgets.Box([self.loading], layout=widgets.Layout(width="100%")) for _ in self.specs
        ]
        self.tabs = widgets.Tab(children=self.slots, titles=[s.title for s in self.specs])
        self.tabs.add_class("nx-tabs")
        self.agent = widgets.HTML(
            f"{light('unknown')}<span class='nx-agent-state'>connecting</span>"
        )
        self.agent.add_class("nx-agent")
        self.updated = widgets.HTML()
        self.updated.add_class("nx-updated")
        title = widgets.HTML("<span class='nx-title'>nexus-ops</span>")
        marks = [demo_label()] if settings is not None and settings.demo else []
        header = widgets.HBox([title, *marks, self.agent, self.updated])
        header.add_class("nx-header")
        self.watch = PageWatch()
        self.widget = widgets.VBox([style_widget(), header, self.tabs, self.watch])
        self.widget.add_class("nx-console")
        every = (
            interval if interval is not None else (settings.console_refresh if settings else 2.0)
        )
        self.refresher = Refresher(self.tick, every, self.watch.alive)
        self.watch.listeners.append(self.refresher.wake)
        self.tabs.observe(self._selected, names="selected_index")
        # Every panel is made now (in a kernel Voila pre-heats, before anyone visits),
        # but a tab's widgets go on the page when it is first opened, so that figures
        # are drawn at their visible size.
        for spec in self.specs:
            self.panels[spec.title] = self._make(spec)
        for index, spec in enumerate(self.specs):
            if index == 0 or spec.title == "Server":
                self.open(index)

    # ---- tabs --------------------------------------------------------------------------

    def open(self, index: int) -> Panel[Any]:
        """The panel of tab ``index``, made and put on the page the first time."""
        spec = self.specs[index]
        panel = self.panels.get(spec.title)
        if panel is None:
            panel = self.panels[spec.title] = self._make(spec)
        if not self.mounted(index):
            self.slots[index].children = [panel.widget]
            self.watch.resize_figures()
        return panel

    def mounted(self, index: int) -> bool:
        """Whether tab ``index``'s panel is on the page."""
        return any(child is not self.loading for child in self.slots[index].children)

    def panel(self, title: str) -> Panel[Any]:
        """The panel of the tab called ``title`` (made if needed)."""
        index = next(i for i, s in enumerate(self.specs) if s.title == title)
        return self.open(index)

    def _make(self, spec: TabSpec) -> Panel[Any]:
        try:
            return spec.resolve()(self.ctx)
        except NexusOpsError as exc:
            return BrokenPanel(self.ctx, spec.title, exc)
        except Exception as exc:
            return BrokenPanel(self.ctx, spec.title, unexpected(exc))

    def _selected(self, change: dict[str, Any]) -> None:
        index = change.get("new")
        if not isinstance(index, int) or not 0 <= index < len(self.specs):
            return
        panel = self.panels[self.specs[index].title]
        if self.mounted(index):
            self.ctx.run(panel.refresh)
            return

        def first_show() -> None:
            # Data first, then onto the page: the browser draws each figure once,
            # instead of empty and then again with its lines.
            panel.refresh()
            with self.ctx.lock:
                self.open(index)

        self.ctx.run(first_show)

    @property
    def current(self) -> Panel[Any] | None:
        index = self.tabs.selected_index
        if index is None or not 0 <= index < len(self.specs):
            return None
        return self.panels.get(self.specs[index].title)

    # ---- refresh -----------------------------------------------------------------------

    def start(self) -> Console:
        """Start the live refresh (it runs while a page shows the console)."""
        self.refresher.start()
        return self

    def close(self) -> None:
        self.refresher.stop()
        for panel in self.panels.values():
            panel.close()
        self.widget.close()

    def due(self, now: float) -> list[Panel[Any]]:
        """The panels a live tick refreshes now: shown (or ``always``), live, and stale."""
        current = self.current
        return [
            panel
            for panel in self.panels.values()
            if (panel is current or panel.always)
            and panel.live
            and now - panel.last_refresh >= panel.interval * 0.9
        ]

    def tick(self) -> None:
        """One live refresh: the panels that are due, then the header."""
        refreshed = self.due(time.monotonic())
        for panel in refreshed:
            panel.refresh()
        self._update_header(refreshed)

    def refresh_all(self) -> None:
        """Make every tab's panel and refresh each once, in this thread."""
        for index in range(len(self.specs)):
            self.open(index)
        panels = list(self.panels.values())
        for panel in panels:
            panel.refresh()
        self._update_header(panels)

    def _update_header(self, refreshed: list[Panel[Any]]) -> None:
        if not refreshed:
            return
        error = next(
            (
                p.banner.error
                for p in refreshed
                if isinstance(p.banner.error, AgentUnavailable | ConfigError)
            ),
            None,
        )
        with self.ctx.lock:
            html = self._agent_html(error)
            if html != self.agent.value:
                self.agent.value = html
            self.updated.value = f"updated {time.strftime('%H:%M:%S')}"

    def _agent_html(self, error: NexusOpsError | None) -> str:
        where = esc(self.agent_url) if self.agent_url else "the agent"
        if error is None:
            return (
                f"{light('connected')}<span class='nx-agent-state'>agent connected</span> ({where})"
            )
        if isinstance(error, ConfigError):
            return (
                f"{light('lost')}<span class='nx-agent-state'>settings invalid</span>: "
                "the Environment tab lists what to fix"
            )
        return (
            f"{light('lost')}<span class='nx-agent-state'>agent lost</span>: "
            f"no answer from {where}; the console reconnects when it is back"
        )

    # ---- display -----------------------------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


class BrokenClient:
    """Every call raises ``error``: the console of invalid settings shows it everywhere."""

    def __init__(self, error: NexusOpsError) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def fail(*_args: object, **_kwargs: object) -> Any:
            raise self.error

        return fail


def demo_label() -> widgets.HTML:
    """The header's mark of a demo console (``NEXUS_DEMO``): nothing here is real work."""
    label = widgets.HTML(
        "<span class='nx-demo' title='A demo: a scripted model answers a synthetic "
        "workload (nexus-ops demo)'>DEMO</span>"
        "<span class='nx-demo-note'>scripted model, synthetic workload</span>"
    )
    label.add_class("nx-demo-mark")
    return label


def read_password(settings: Settings) -> str:
    """The server's password, from its secret file (never created here)."""
    path = Layout(settings.home).server_password_file
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise NexusOpsError(
            f"there is no password file at {path} yet",
            hint="start the server once (the agent generates its password then)",
        ) from exc
    except OSError as exc:
        raise NexusOpsError(
            f"cannot read the password file {path}: {exc.strerror}",
            hint="run the console as the user that runs the agent",
        ) from exc
    if not value:
        raise NexusOpsError(f"the password file {path} is empty", hint="restart the server")
    return value


def console(
    settings: Settings | None = None, client: AgentLike | None = None, live: bool = True
) -> Console:
    """The console of this host's agent (from the ``NEXUS_*`` settings), started live.

    Invalid settings do not raise: every tab shows what is wrong and how to fix it.
    """
    problems: list[str] = []
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            problems = [
                line.strip()[2:]
                for line in exc.message.splitlines()
                if line.strip().startswith("- ")
            ]
            made = Console(BrokenClient(exc), None, problems=problems or [exc.message])
            return made.start() if live else made
    if client is None:
        client = AgentClient.from_settings(settings, timeout=10.0)
    current = settings
    made = Console(client, settings, secret=lambda: read_password(current), problems=problems)
    return made.start() if live else made
