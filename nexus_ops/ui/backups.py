"""The Backups panel: the schedule, the last success, every backup; back up, verify, prune,
restore.

Pruning and restoring over the live folders ask first. Slow work runs off the
kernel's main thread and reports in the banner.

Sizes, ages and durations are written as the metric catalogue writes them.

>>> count_text(12345)
'12,345'
"""

from __future__ import annotations

import time
from typing import Any, Protocol, cast

import ipywidgets as widgets

from nexus_ops.backup.models import (
    BackupInfo,
    Manifest,
    PruneReport,
    RestoreReport,
    VerifyReport,
)
from nexus_ops.metrics.catalogue import format_value
from nexus_ops.ui.base import Panel, PanelContext, table_html
from nexus_ops.ui.style import esc

QUESTIONS = {
    "prune": "Remove the backups the retention policy does not keep?",
    "restore": "Restore {id} over the live OpenCode folders? The server is stopped, what is "
    "replaced is kept in a pre-restore backup, and it is rolled back if the server does not "
    "come back.",
}


class BackupAgent(Protocol):
    """What the panel asks of the agent (:class:`nexus_ops.client.AgentClient` has it)."""

    def backups(self) -> list[BackupInfo]: ...

    def backup_schedule(self) -> dict[str, Any]: ...

    def create_backup(self, include_nexus: bool | None = None) -> Manifest: ...

    def verify_backup(self, backup_id: str) -> VerifyReport: ...

    def prune_backups(self, dry_run: bool = True) -> PruneReport: ...

    def restore_backup(
        self, backup_id: str, parts: list[str] | None = None, to_folder: str | None = None
    ) -> RestoreReport: ...


def size_text(size: float) -> str:
    """``3145728`` -> ``'3.0 MiB'``."""
    return format_value(size, "bytes", 1)


def count_text(count: int | None) -> str | None:
    """A count with thousands separators (None stays None: the table shows "-")."""
    return None if count is None else format_value(float(count), "count")


def _when(stamp: float | None) -> str:
    return esc(time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else None)


def schedule_html(schedule: dict[str, Any]) -> str:
    last = schedule.get("last_success")
    age = f" ({format_value(time.time() - last, 'duration')} ago)" if last else ""
    rows = [
        ["Schedule", f"<code>{esc(schedule.get('schedule'))}</code>"],
        ["Next backup", _when(schedule.get("next_run"))],
        ["Last success", _when(last) + esc(age) if last else "never"],
        ["Its size", esc(size_text(schedule["last_size"]) if schedule.get("last_size") else None)],
        ["It took", esc(format_value(schedule["last_duration"], "seconds", 1) if last else None)],
    ]
    return table_html(None, rows, "nx-details nx-backup-schedule")


def backups_html(backups: list[BackupInfo]) -> str:
    if not backups:
        return "<p class='nx-muted'>No backup yet: press Back up now.</p>"
    rows = [
        [
            f"<code>{esc(b.id)}</code>",
            _when(b.created),
            esc(b.kind),
            esc(size_text(b.size)),
            esc(count_text(b.files)),
            esc(count_text(b.sessions)),
            esc(b.opencode_version),
        ]
        for b in backups
    ]
    headers = ["backup", "made", "kind", "size", "files", "sessions", "OpenCode"]
    classes = ["nx-event-restart" if b.kind == "pre-restore" else "nx-event" for b in backups]
    return table_html(headers, rows, "nx-backups-table", classes)


def prune_html(report: PruneReport) -> str:
    rows = [
        [
            f"<code>{esc(d.id)}</code>",
            "keep" if d.keep else "<b>remove</b>",
            esc(", ".join(d.reasons)),
        ]
        for d in report.decisions
    ]
    return table_html(["backup", "decision", "kept by"], rows, "nx-prune-plan")


class BackupsPanel(Panel[tuple[dict[str, Any], list[BackupInfo]]]):
    """The backups of this host and what can be done with them.

    >>> # panel = BackupsPanel(ctx); panel.refresh(); panel.list.value
    """

    title = "Backups"
    interval = 10.0
    css = "nx-backups"

    def __init__(self, ctx: PanelContext) -> None:
        self.backups: list[BackupInfo] = []
        self.pending: str | None = None
        self.busy = False
        super().__init__(ctx)

    @property
    def agent(self) -> BackupAgent:
        return cast(BackupAgent, self.ctx.client)

    def build(self) -> widgets.Widget:
        self.schedule = widgets.HTML()
        self.list = widgets.HTML(backups_html([]))
        self.list.add_class("nx-backups-list")
        self.choice = widgets.Dropdown(description="Backup", options=[], layout={"width": "420px"})
        self.buttons = {
            "create": widgets.Button(
                description="Back up now", icon="save", button_style="success"
            ),
            "verify": widgets.Button(description="Verify", icon="check"),
            "plan": widgets.Button(description="Prune (dry run)", icon="list"),
            "prune": widgets.Button(description="Prune", icon="trash", button_style="warning"),
            "restore": widgets.Button(description="Restore", icon="undo", button_style="danger"),
        }
        for verb, button in self.buttons.items():
            button.add_class(f"nx-backup-{verb}")
        self.buttons["create"].on_click(self.guarded(lambda: self.act("create")))
        self.buttons["verify"].on_click(self.guarded(lambda: self.act("verify")))
        self.buttons["plan"].on_click(self.guarded(lambda: self.act("plan")))
        self.buttons["prune"].on_click(self.guarded(lambda: self.ask("prune")))
        self.buttons["restore"].on_click(self.guarded(lambda: self.ask("restore")))
        self.question = widgets.HTML()
        yes = widgets.Button(description="Yes", button_style="danger")
        no = widgets.Button(description="Cancel")
        yes.on_click(self.guarded(self.confirmed))
        no.on_click(self.guarded(self.cancelled))
        self.confirm = widgets.HBox([self.question, yes, no], layout={"display": "none"})
        self.confirm.add_class("nx-confirm")
        self.result = widgets.HTML()
        self.result.add_class("nx-backup-result")
        controls = widgets.HBox(
            [self.choice, *self.buttons.values()], layout={"flex_flow": "row wrap"}
        )
        return widgets.VBox([self.schedule, controls, self.confirm, self.result, self.list])

    # ---- refresh -----------------------------------------------------------------------

    def fetch(self) -> tuple[dict[str, Any], list[BackupInfo]]:
        return self.agent.backup_schedule(), self.agent.backups()

    def show(self, data: tuple[dict[str, Any], list[BackupInfo]]) -> None:
        schedule, backups = data
        self.backups = backups
        for widget, html in (
            (self.schedule, schedule_html(schedule)),
            (self.list, backups_html(backups)),
        ):
            if widget.value != html:
                widget.value = html
        options = [(f"{b.id} ({b.kind})", b.id) for b in backups]
        if list(self.choice.options) != options:
            selected = self.choice.value
            self.choice.options = options
            ids = [b.id for b in backups]
            self.choice.value = selected if selected in ids else (ids[0] if ids else None)
        self._update_buttons()

    def _update_buttons(self) -> None:
        chosen = bool(self.choice.value)
        for verb, button in self.buttons.items():
            enabled = not self.busy and (chosen or verb in ("create", "plan", "prune"))
            button.disabled = not enabled

    # ---- actions -----------------------------------------------------------------------

    def ask(self, verb: str) -> None:
        self.pending = verb
        self.question.value = esc(QUESTIONS[verb].format(id=self.choice.value))
        self.confirm.layout.display = None

    def confirmed(self) -> None:
        verb, self.pending = self.pending, None
        self.confirm.layout.display = "none"
        if verb:
            self.act(verb)

    def cancelled(self) -> None:
        self.pending = None
        self.confirm.layout.display = "none"

    def act(self, verb: str) -> None:
        """Run ``verb`` off the main thread; the banner says what happens."""
        backup_id = str(self.choice.value or "")
        with self.ctx.lock:
            self.busy = True
            self._update_buttons()
            self.banner.note(f"{verb}: working ...", level="busy")

        def work() -> None:
            try:
                text, html = self._do(verb, backup_id)
                level = "error" if "FAIL" in text or "NOT VERIFY" in text else "ok"
                with self.ctx.lock:
                    self.banner.note(text, level=level, ttl=None if level == "error" else 30)
                    self.result.value = html
            finally:
                with self.ctx.lock:
                    self.busy = False
                    self._update_buttons()
            self.refresh()

        self.in_background(work)

    def _do(self, verb: str, backup_id: str) -> tuple[str, str]:
        if verb == "create":
            made = self.agent.create_backup()
            size = made.archive.size if made.archive else 0
            return f"backup {made.id}: {len(made.files)} files, {size_text(size)}", ""
        if verb == "verify":
            checked = self.agent.verify_backup(backup_id)
            problems = "".join(f"<li>{esc(p)}</li>" for p in checked.problems)
            text = f"{backup_id}: " + ("verifies" if checked.ok else "DOES NOT VERIFY")
            return text, f"<ul class='nx-problems'>{problems}</ul>" if problems else ""
        if verb in ("plan", "prune"):
            report = self.agent.prune_backups(dry_run=verb == "plan")
            gone = report.to_remove if report.dry_run else report.removed
            word = "would remove" if report.dry_run else "removed"
            return f"{word} {len(gone)} backup(s), keeping {len(report.kept)}", prune_html(report)
        restored = self.agent.restore_backup(backup_id)
        steps = "".join(f"<li>{esc(s)}</li>" for s in restored.steps)
        text = (
            f"restored {backup_id} in {format_value(restored.seconds, 'seconds', 1)}"
            if restored.ok
            else f"restore FAILED and was rolled back: {restored.error}"
        )
        return text, f"<ol class='nx-restore-steps'>{steps}</ol>"
