"""The Environment panel: the agent's profile and settings (secrets masked), and problems.

Problems are what is wrong with the console's own settings (an invalid variable,
an unknown one), and a console that reads another ``NEXUS_HOME`` than its agent
(the password it would show is then not the server's).

>>> settings_html([{"variable": "NEXUS_ENV", "value": "staging", "description": "Profile."}])[:49]
"<table class='nx-table nx-cards nx-env-table'><th"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from nexus_ops.config import Settings
from nexus_ops.ui.base import Panel, PanelContext, table_html
from nexus_ops.ui.style import esc


@dataclass
class EnvironmentData:
    profile: str
    settings: list[dict[str, str]]
    problems: list[str] = field(default_factory=list)


def settings_html(rows: list[dict[str, str]], contains: str = "") -> str:
    """The settings as a table, optionally only rows whose text contains ``contains``."""
    needle = contains.lower().strip()
    shown = [r for r in rows if needle in " ".join(r.values()).lower()] if needle else rows
    cells = [
        [f"<code>{esc(r['variable'])}</code>", esc(r["value"] or "-"), esc(r["description"])]
        for r in shown
    ]
    return table_html(["variable", "value", "meaning"], cells, "nx-env-table")


def problems_html(problems: list[str]) -> str:
    if not problems:
        return "<p class='nx-env-ok'>No problems found in the settings.</p>"
    items = "".join(f"<li>{esc(p)}</li>" for p in problems)
    return f"<div class='nx-banner-error'><b>Problems in the settings:</b><ul>{items}</ul></div>"


def home_mismatch(settings: Settings | None, agent_rows: list[dict[str, str]]) -> list[str]:
    """A problem when the console and the agent do not share NEXUS_HOME."""
    if settings is None:
        return []
    agent_home = next((r["value"] for r in agent_rows if r["variable"] == "NEXUS_HOME"), None)
    if agent_home is None or Path(agent_home).expanduser() == settings.home:
        return []
    return [
        f"this console reads NEXUS_HOME={settings.home} but the agent uses {agent_home}: "
        "set the same NEXUS_HOME for both (the password shown comes from the console's)"
    ]


class EnvironmentPanel(Panel[EnvironmentData]):
    """Profile, every setting with its value and meaning, and what is wrong.

    >>> # EnvironmentPanel(ctx).refresh() shows ctx.client.config()
    """

    title = "Environment"
    interval = 60.0
    css = "nx-environment"

    def __init__(self, ctx: PanelContext) -> None:
        self.data: EnvironmentData | None = None
        super().__init__(ctx)

    def build(self) -> widgets.Widget:
        self.profile = widgets.HTML()
        self.profile.add_class("nx-env-profile")
        self.problems = widgets.HTML(problems_html(list(self.ctx.problems)))
        self.problems.add_class("nx-env-problems")
        self.filter = widgets.Text(placeholder="variable, value or meaning", description="Find")
        self.filter.add_class("nx-env-filter")
        self.filter.observe(self.guarded(self._redraw), names="value")
        self.table = widgets.HTML()
        self.table.add_class("nx-env")
        return widgets.VBox([self.profile, self.problems, self.filter, self.table])

    def fetch(self) -> EnvironmentData:
        body: Mapping[str, Any] = self.ctx.client.config()
        rows = [
            {k: str(row.get(k, "")) for k in ("variable", "value", "description")}
            for row in body.get("settings", [])
        ]
        problems = list(self.ctx.problems) + home_mismatch(self.ctx.settings, rows)
        return EnvironmentData(str(body.get("profile", "?")), rows, problems)

    def show(self, data: EnvironmentData) -> None:
        self.data = data
        self.profile.value = (
            f"Profile: <b class='nx-env-profile-name'>{esc(data.profile)}</b>"
            " <span class='nx-muted'>(the agent's settings; secrets are masked)</span>"
        )
        self.problems.value = problems_html(data.problems)
        self._redraw()

    def _redraw(self, change: object = None) -> None:
        if self.data is not None:
            html = settings_html(self.data.settings, str(self.filter.value))
            if html != self.table.value:
                self.table.value = html
