"""The console's tabs: a small registry, so that a capability adds its tab in one line.

A tab is a title, a factory that makes its :class:`~nexus_ops.ui.base.Panel` from
a :class:`~nexus_ops.ui.base.PanelContext` (a class, a function, or the text
``"module:name"``, imported when the tab is first opened), and an order::

    register_tab("Backups", "nexus_ops.ui.backups:BackupsPanel", order=60)

A tab whose factory fails shows the error in its place; the other tabs work on.

>>> registry = TabRegistry()
>>> registry.register("Second", "x:Y", order=20); registry.register("First", "x:Z", order=10)
>>> [spec.title for spec in registry.specs()]
['First', 'Second']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nexus_ops.errors import NexusOpsError
from nexus_ops.ui.base import Panel, PanelContext

PanelFactory = Callable[[PanelContext], Panel[Any]]


@dataclass(frozen=True)
class TabSpec:
    """One tab of the console."""

    title: str
    factory: PanelFactory | str
    order: int = 100

    def resolve(self) -> PanelFactory:
        """The factory itself (importing ``"module:name"``)."""
        if not isinstance(self.factory, str):
            return self.factory
        module, _, name = self.factory.partition(":")
        try:
            found: PanelFactory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise NexusOpsError(
                f"the {self.title} tab's panel {self.factory} cannot be loaded ({exc})",
                hint="reinstall nexus-ops, or fix the tab's registration",
            ) from exc
        return found


class TabRegistry:
    """Tabs by title; registering a title again replaces its tab."""

    def __init__(self) -> None:
        self._tabs: dict[str, TabSpec] = {}

    def register(self, title: str, factory: PanelFactory | str, order: int = 100) -> None:
        if not title.strip():
            raise NexusOpsError("a tab needs a title", hint="register_tab('Backups', ...)")
        self._tabs[title] = TabSpec(title, factory, order)

    def unregister(self, title: str) -> None:
        self._tabs.pop(title, None)

    def specs(self) -> list[TabSpec]:
        """The tabs in order (then by title)."""
        return sorted(self._tabs.values(), key=lambda spec: (spec.order, spec.title))


TABS = TabRegistry()


def register_tab(title: str, factory: PanelFactory | str, order: int = 100) -> None:
    """Add a tab to every console made from now on (see the module's docstring)."""
    TABS.register(title, factory, order)


register_tab("Server", "nexus_ops.ui.server:ServerPanel", order=10)
register_tab("Metrics", "nexus_ops.ui.metrics:MetricsPanel", order=20)
register_tab("Logs", "nexus_ops.ui.logs:LogsPanel", order=30)
register_tab("Events", "nexus_ops.ui.events:EventsPanel", order=40)
register_tab("Usage", "nexus_ops.ui.usage:UsagePanel", order=25)
register_tab("Alerts", "nexus_ops.ui.alerts:AlertsPanel", order=50)
register_tab("Backups", "nexus_ops.ui.backups:BackupsPanel", order=60)
register_tab("Runbooks", "nexus_ops.ui.runbooks:RunbooksPanel", order=70)
register_tab("Devices", "nexus_ops.ui.devices:DevicesPanel", order=80)
register_tab("Environment", "nexus_ops.ui.environment:EnvironmentPanel", order=90)
