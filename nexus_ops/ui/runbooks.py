"""The Runbooks panel: pick a runbook, fill its typed parameters, run it in the agent, and
follow its progress to its outcome; below, the recent runs and one run in full (its
findings, parameters, trigger, and the executed notebook as the agent renders it).

The form is made from the parameters the notebook declares (a checkbox for a
``bool``, number fields, text; a ``list[str]`` as comma-separated text), so the
agent checks the values exactly as `nexus-ops runbook run` does. A run that may
repair (``dry_run`` unticked) asks first.

>>> field_value("list[str]", " a, b ,")
['a', 'b']
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import ipywidgets as widgets

from nexus_ops.runbooks.models import ParamSpec, Runbook
from nexus_ops.runbooks.prose import markdown_html
from nexus_ops.runbooks.verdict import Verdict
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

    def run_html(self, run_id: str) -> str: ...


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


def outcome(run: RunRecord) -> tuple[str, str]:
    """What became of a run, as a banner's (text, level)."""
    if run.status == "running":
        return (
            f"{run.runbook} is running: run {run.id} ({run.cells_done}/{run.cells_total} cells)",
            "busy",
        )
    if run.status == "succeeded" and run.healthy:
        return f"{run.runbook} finished: healthy: {verdict_text(run)} (run {run.id})", "ok"
    if run.status == "succeeded":
        return f"{run.runbook} finished: unhealthy: {verdict_text(run)} (run {run.id})", "error"
    return (
        f"{run.runbook} {run.status}: {verdict_text(run) or 'no verdict'} (run {run.id})",
        "error",
    )


def run_label(run: RunRecord) -> str:
    """A run in the run picker: when, which runbook, how it ended."""
    healthy = {None: "", True: ", healthy", False: ", unhealthy"}[run.healthy]
    started = time.strftime("%H:%M:%S", time.localtime(run.started))
    return f"{started} {run.runbook} ({run.status}{healthy})"


def run_detail_html(run: RunRecord) -> str:
    """One run in full: trigger, parameters, verdict, every finding and action."""
    took = f"{run.duration:.1f} s" if run.duration is not None else "still running"
    params = ", ".join(f"{k}={v!r}" for k, v in sorted(run.parameters.items()))
    healthy = {None: "-", True: "healthy", False: "unhealthy"}[run.healthy]
    details = [
        ["run", esc(run.id)],
        ["runbook", f"<b>{esc(run.runbook)}</b>"],
        ["started by", esc(run.who)],
        ["started", esc(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started)))],
        ["took", esc(took)],
        ["parameters", esc(params or "none")],
        ["status", esc(run.status)],
        ["verdict", f"<b>{esc(healthy)}</b>: {esc(verdict_text(run))}"],
    ]
    if run.error:
        where = f" (cell {run.failed_cell})" if run.failed_cell is not None else ""
        details.append([f"error{where}", esc(run.error)])
    parts = [table_html(None, details, "nx-details nx-run-details")]
    if run.verdict:
        verdict = Verdict.model_validate(run.verdict)
        parts.append(findings_html(verdict))
        if verdict.actions:
            parts.append(actions_html(verdict))
    return "".join(parts)


def findings_html(verdict: Verdict) -> str:
    if not verdict.findings:
        return "<p class='nx-muted'>The verdict lists no checks.</p>"
    rows, classes = [], []
    for finding in verdict.findings:
        status = "ok" if finding.ok else finding.severity
        rows.append([f"<b>{esc(status)}</b>", esc(finding.check), esc(finding.summary)])
        bad = "nx-event-crash" if finding.severity == "error" else "nx-event-restart"
        classes.append("nx-event" if finding.ok else bad)
    return "<div class='nx-section'>Findings</div>" + table_html(
        ["status", "check", "detail"], rows, "nx-findings", classes
    )


def actions_html(verdict: Verdict) -> str:
    rows = [
        [esc("done" if a.done else "not done"), esc(a.name), esc(a.summary)]
        for a in verdict.actions
    ]
    classes = ["nx-event" if a.ok else "nx-event-crash" for a in verdict.actions]
    return "<div class='nx-section'>Actions</div>" + table_html(
        ["done", "action", "detail"], rows, "nx-actions", classes
    )


def notebook_frame(page: str) -> str:
    """The executed notebook's HTML page in a sandboxed frame (no scripts run in it)."""
    return (
        "<div class='nx-section'>Executed notebook</div>"
        "<iframe class='nx-run-notebook' sandbox title='executed notebook' "
        "style='width: 100%; height: 70vh; border: 1px solid #ddd; background: #fff;' "
        f'srcdoc="{html.escape(page, quote=True)}"></iframe>'
    )


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


@dataclass(frozen=True)
class RunsView:
    """What one refresh brings: the recent runs, and the notebook page of the shown run
    when it has not been loaded yet."""

    runs: list[RunRecord]
    page: tuple[str, str] | None = None


class RunbooksPanel(Panel[RunsView]):
    """Runbooks: a form per runbook, the recent runs, and one run in full.

    The first runbook is chosen when the list arrives; Run stays disabled (and says
    why) while there is none. The banner follows a run started here until it ends,
    then shows its outcome. The run shown in full is the one started here, else the
    newest, else the one picked; its executed notebook is shown once it has ended.

    >>> # panel = RunbooksPanel(ctx); panel.choice.value = "backup"; panel.run_button.click()
    """

    title = "Runbooks"
    interval = 2.0
    css = "nx-runbooks"

    def __init__(self, ctx: PanelContext) -> None:
        self.books: dict[str, Runbook] = {}
        self.fields: dict[str, widgets.Widget] = {}
        self.watching: str | None = None
        self.page_of: str | None = None
        self._picking = False
        super().__init__(ctx)

    @property
    def agent(self) -> RunbookAgent:
        return cast(RunbookAgent, self.ctx.client)

    def build(self) -> widgets.Widget:
        self.choice = widgets.Dropdown(description="Runbook", options=[], layout={"width": "460px"})
        self.choice.add_class("nx-runbook-choice")
        self.choice.observe(self.guarded(self._chosen), names="value")
        self.about = widgets.HTML()
        self.about.add_class("nx-runbook-about")
        self.form = widgets.VBox()
        self.run_button = widgets.Button(
            description="Run", icon="play", button_style="primary", disabled=True
        )
        self.run_button.add_class("nx-runbook-run")
        self.run_button.on_click(self.guarded(self.ask))
        self.why = widgets.HTML("<span class='nx-muted'>Loading the runbooks\u2026</span>")
        self.why.add_class("nx-runbook-why")
        self.question = widgets.HTML()
        yes = widgets.Button(description="Yes, repair", button_style="danger")
        no = widgets.Button(description="Cancel")
        yes.on_click(self.guarded(self.confirmed))
        no.on_click(self.guarded(self.cancelled))
        self.confirm = widgets.HBox([self.question, yes, no], layout={"display": "none"})
        self.confirm.add_class("nx-confirm")
        self.runs = widgets.HTML(runs_html([]))
        self.runs.add_class("nx-runs")
        self.run_choice = widgets.Dropdown(
            description="Show run", options=[], layout={"width": "460px"}
        )
        self.run_choice.add_class("nx-run-choice")
        self.run_choice.observe(self.guarded(self._picked), names="value")
        self.detail = widgets.HTML()
        self.detail.add_class("nx-run-detail")
        self.notebook = widgets.HTML()
        self.notebook.add_class("nx-run-notebook-view")
        heading = widgets.HTML("<div class='nx-section'>Recent runs</div>")
        return widgets.VBox(
            [
                self.choice,
                self.about,
                self.form,
                widgets.HBox([self.run_button, self.why]),
                self.confirm,
                heading,
                self.runs,
                self.run_choice,
                self.detail,
                self.notebook,
            ]
        )

    # ---- refresh -----------------------------------------------------------------------

    def fetch(self) -> RunsView:
        if not self.books:
            books = self.agent.runbooks()
            with self.ctx.lock:
                self.books = {b.name: b for b in books}
                self.choice.options = list(self.books)
                if self.books:  # the first runbook is chosen (its observer shows it)
                    self.choice.value = next(iter(self.books))
                else:
                    self._chosen()
        runs = self.agent.runs(20)
        shown = self.shown_run(runs)
        if shown is None or shown.status == "running" or shown.id == self.page_of:
            return RunsView(runs)
        return RunsView(runs, (shown.id, self.agent.run_html(shown.id)))

    def shown_run(self, runs: list[RunRecord]) -> RunRecord | None:
        """The run to show in full: the one started here, else the one picked, else the newest."""
        by_id = {run.id: run for run in runs}
        for wanted in (self.watching, self.run_choice.value):
            if wanted in by_id:
                return by_id[str(wanted)]
        return runs[0] if runs else None

    def show(self, data: RunsView) -> None:
        html_ = runs_html(data.runs)
        if self.runs.value != html_:
            self.runs.value = html_
        shown = self.shown_run(data.runs)
        self._pick(data.runs, shown)
        detail = run_detail_html(shown) if shown else ""
        if self.detail.value != detail:
            self.detail.value = detail
        if shown is not None and shown.id == self.watching:
            text, level = outcome(shown)
            self.banner.note(text, level=level)
            if shown.status != "running":
                self.watching = None
        if data.page is not None and shown is not None and data.page[0] == shown.id:
            self.page_of, page = data.page
            self.notebook.value = notebook_frame(page)
        elif shown is None or shown.id != self.page_of:
            self.notebook.value = ""

    def _pick(self, runs: list[RunRecord], shown: RunRecord | None) -> None:
        """The run picker lists the recent runs and shows ``shown`` (without a refresh)."""
        options = [(run_label(run), run.id) for run in runs]
        self._picking = True
        try:
            with self.run_choice.hold_sync():
                if list(self.run_choice.options) != options:
                    self.run_choice.options = options
                self.run_choice.value = shown.id if shown else None
        finally:
            self._picking = False
        self.run_choice.layout.display = None if runs else "none"

    def _picked(self, *_: object) -> None:
        if not self._picking:
            self.watching = None
            self.in_background(self.refresh)

    def _chosen(self, *_: object) -> None:
        book = self.books.get(str(self.choice.value))
        self.run_button.disabled = book is None
        if book is None:
            self.about.value = ""
            self.form.children = []
            none = "No runbook is installed." if not self.books else "Choose a runbook to run."
            self.why.value = f"<span class='nx-muted'>{esc(none)}</span>"
            return
        self.why.value = ""
        self.about.value = f"<b>{esc(book.title)}</b>{markdown_html(book.description)}"
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
        if self.choice.value not in self.books:
            self.banner.note("Choose a runbook first.", level="info", ttl=20)
            return
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
                self.watching = run.id
                self.banner.note(f"{name} started: run {run.id}", level="busy")
            self.refresh()

        self.in_background(work)
