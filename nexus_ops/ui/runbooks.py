"""The Runbooks panel: pick a runbook, fill its typed parameters, run it in the agent, and
follow its progress and verdict; the recent runs below.

The form is made from the parameters the notebook declares (a checkbox for a
``bool``, number fields, text; a ``list[str]`` as comma-separated text), so the
agent checks the values exactly as `nexus-ops runbook run` does. A run that may
repair (``dry_run`` unticked) asks first.

>>> field_value("list[str]", " a, b ,")
['a', 'b']
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol, cast

import ipywidgets as widgets

from nexus_ops.runbooks.models import ParamSpec, Runbook
from nexus_ops.store.runs import RunRecord
from nexus_ops.ui.base import Panel, PanelContext, table_html
from nexus_ops.ui.style import esc


class RunbookAgent(Protocol):
    """What the panel asks of the agent (:class:`nexus_ops.client.AgentClient` has it)."""

    def runbooks(self) -> list[Runbook]: ...

    def start_run(
        self, name: str, parameters: Mapping[str, Any] | None = None, who: str | None = None
    ) -> RunRecord: ...

    def runs(self, limit: int = 50, runbook: str | None = None) -> list[RunRecord]: ...


def field_for(spec: ParamSpec) -> widgets.Widget:
    """The input of one parameter, set to its default."""
    style = {"description_width": "140px"}
    layout = {"width": "460px"}
    if spec.type == "bool":
        return widgets.Checkbox(value=bool(spec.default), description=spec.name, indent=False)
    if spec.type == "int":
        return widgets.IntText(
            value=int(spec.default or 0), description=spec.name, style=style, layout=layout
        )
    if spec.type == "float":
        return widgets.FloatText(
            value=float(spec.default or 0), description=spec.name, style=style, layout=layout
        )
    default = spec.default
    text = ", ".join(str(v) for v in default) if isinstance(default, list) else str(default or "")
    return widgets.Text(value=text, description=spec.name, style=style, layout=layout)


def field_value(type_name: str, value: Any) -> Any:
    """What a field holds, as the parameter's type (lists from comma-separated text)."""
    if type_name.startswith("list[") and isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def verdict_text(run: RunRecord) -> str:
    if run.verdict:
        return str(run.verdict.get("summary", ""))
    return run.error or ("running" if run.status == "running" else "")


def runs_html(runs: list[RunRecord]) -> str:
    if not runs:
        return "<p class='nx-muted'>No runbook has run yet.</p>"
    rows = []
    classes = []
    for run in runs:
        progress = f"{run.cells_done}/{run.cells_total} cells"
        took = f"{run.duration:.1f} s" if run.duration is not None else progress
        params = ", ".join(f"{k}={v}" for k, v in sorted(run.parameters.items()))
        healthy = {None: "-", True: "healthy", False: "unhealthy"}[run.healthy]
        rows.append(
            [
                esc(time.strftime("%H:%M:%S", time.localtime(run.started))),
                f"<b>{esc(run.runbook)}</b>",
                esc(run.who),
                esc(params or None),
                esc(run.status),
                esc(took),
                esc(healthy),
                esc(verdict_text(run)),
            ]
        )
        bad = run.status in ("failed", "interrupted") or run.healthy is False
        classes.append("nx-event-crash" if bad else "nx-event")
    headers = ["started", "runbook", "who", "parameters", "status", "took", "verdict", "summary"]
    return table_html(headers, rows, "nx-runs-table", classes)


class RunbooksPanel(Panel[list[RunRecord]]):
    """Runbooks: a form per runbook, and the recent runs with their verdicts.

    >>> # panel = RunbooksPanel(ctx); panel.choice.value = "backup"; panel.run_button.click()
    """

    title = "Runbooks"
    interval = 2.0
    css = "nx-runbooks"

    def __init__(self, ctx: PanelContext) -> None:
        self.books: dict[str, Runbook] = {}
        self.fields: dict[str, widgets.Widget] = {}
        super().__init__(ctx)

    @property
    def agent(self) -> RunbookAgent:
        return cast(RunbookAgent, self.ctx.client)

    def build(self) -> widgets.Widget:
        self.choice = widgets.Dropdown(description="Runbook", options=[], layout={"width": "460px"})
        self.choice.observe(self.guarded(self._chosen), names="value")
        self.about = widgets.HTML()
        self.about.add_class("nx-runbook-about")
        self.form = widgets.VBox()
        self.run_button = widgets.Button(description="Run", icon="play", button_style="primary")
        self.run_button.add_class("nx-runbook-run")
        self.run_button.on_click(self.guarded(self.ask))
        self.question = widgets.HTML()
        yes = widgets.Button(description="Yes, repair", button_style="danger")
        no = widgets.Button(description="Cancel")
        yes.on_click(self.guarded(self.confirmed))
        no.on_click(self.guarded(self.cancelled))
        self.confirm = widgets.HBox([self.question, yes, no], layout={"display": "none"})
        self.confirm.add_class("nx-confirm")
        self.runs = widgets.HTML(runs_html([]))
        self.runs.add_class("nx-runs")
        heading = widgets.HTML("<div class='nx-section'>Recent runs</div>")
        return widgets.VBox(
            [self.choice, self.about, self.form, self.run_button, self.confirm, heading, self.runs]
        )

    # ---- refresh -----------------------------------------------------------------------

    def fetch(self) -> list[RunRecord]:
        if not self.books:
            books = self.agent.runbooks()
            with self.ctx.lock:
                self.books = {b.name: b for b in books}
                self.choice.options = list(self.books)
        return self.agent.runs(20)

    def show(self, data: list[RunRecord]) -> None:
        html = runs_html(data)
        if self.runs.value != html:
            self.runs.value = html

    def _chosen(self, *_: object) -> None:
        book = self.books.get(str(self.choice.value))
        if book is None:
            return
        self.about.value = f"<b>{esc(book.title)}</b><p>{esc(book.description)}</p>"
        self.fields = {p.name: field_for(p) for p in book.parameters}
        rows = []
        for spec in book.parameters:
            hint = widgets.HTML(f"<span class='nx-muted'>{esc(spec.type)}: {esc(spec.help)}</span>")
            rows.append(widgets.HBox([self.fields[spec.name], hint]))
        self.form.children = rows

    def parameters(self) -> dict[str, Any]:
        book = self.books[str(self.choice.value)]
        return {p.name: field_value(p.type, self.fields[p.name].value) for p in book.parameters}

    # ---- running -----------------------------------------------------------------------

    def ask(self) -> None:
        """A dry run starts at once; a run that may repair asks first."""
        if self.parameters().get("dry_run", True) is False:
            self.question.value = esc(
                f"Run {self.choice.value} with dry_run off? It may "
                "restart, restore or stop processes."
            )
            self.confirm.layout.display = None
            return
        self.start()

    def confirmed(self) -> None:
        self.confirm.layout.display = "none"
        self.start()

    def cancelled(self) -> None:
        self.confirm.layout.display = "none"

    def start(self) -> None:
        name, parameters = str(self.choice.value), self.parameters()

        def work() -> None:
            run = self.agent.start_run(name, parameters, who="console")
            with self.ctx.lock:
                self.banner.note(f"{name} started: run {run.id}", level="ok", ttl=20)
            self.refresh()

        self.in_background(work)
