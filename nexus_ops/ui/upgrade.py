"""The upgrade box of the Server tab: the current or last upgrade (or rollback), its
steps with their times and its outcome, and the Upgrade and Rollback buttons (each
asks first).

>>> # box = UpgradePanel(PanelContext(client=AgentClient.from_settings(settings)))
>>> # box.refresh(); box.widget
"""

from __future__ import annotations

import time
from typing import Any

import ipywidgets as widgets

from nexus_ops.ui.base import Panel, PanelContext, table_html
from nexus_ops.ui.style import esc
from nexus_ops.upgrade.record import OperationRecord

QUESTIONS = {
    "upgrade": "Upgrade OpenCode to {target}? The server stops for a few seconds; if the new "
    "version fails its checks or its probation, it is rolled back.",
    "rollback": "Roll the last upgrade back? The server stops; its database since the upgrade "
    "is kept aside, the pre-upgrade backup restored and the previous version started.",
}
# While an operation runs the box is refreshed on every tick of the Server panel.
IDLE_REFRESH = 10.0


class UpgradePanel(Panel[dict[str, Any]]):
    """Upgrades and rollbacks of OpenCode, shown inside the Server panel."""

    title = "Upgrade"
    css = "nx-upgrade-box"

    def __init__(self, ctx: PanelContext) -> None:
        self.operation: OperationRecord | None = None
        self.pending: str | None = None
        self.busy = False
        super().__init__(ctx)

    def build(self) -> widgets.Widget:
        self.summary = widgets.HTML("<b>Upgrades</b>")
        self.summary.add_class("nx-upgrade-summary")
        self.version = widgets.Text(placeholder="newest on npm", description="Version")
        self.version.add_class("nx-upgrade-version")
        self.upgrade_button = widgets.Button(description="Upgrade", icon="arrow-up")
        self.upgrade_button.add_class("nx-upgrade")
        self.rollback_button = widgets.Button(description="Rollback", icon="undo")
        self.rollback_button.add_class("nx-rollback")
        self.upgrade_button.on_click(self.guarded(lambda: self.ask("upgrade")))
        self.rollback_button.on_click(self.guarded(lambda: self.ask("rollback")))
        self.question = widgets.HTML()
        yes = widgets.Button(description="Yes", button_style="danger")
        yes.add_class("nx-upgrade-yes")
        no = widgets.Button(description="Cancel")
        yes.on_click(self.guarded(self.confirmed))
        no.on_click(self.guarded(self.cancelled))
        self.confirm = widgets.HBox([self.question, yes, no], layout={"display": "none"})
        self.confirm.add_class("nx-upgrade-confirm")
        controls = widgets.HBox([self.version, self.upgrade_button, self.rollback_button])
        return widgets.VBox([self.summary, controls, self.confirm])

    def due(self) -> bool:
        """Whether the Server panel should refresh this box now."""
        running = self.operation is not None and self.operation.running
        return running or self.busy or time.monotonic() - self.last_refresh >= IDLE_REFRESH

    def fetch(self) -> dict[str, Any]:
        return self.ctx.client.upgrade_status()

    def show(self, data: dict[str, Any]) -> None:
        found = data.get("operation")
        self.operation = None if found is None else OperationRecord.model_validate(found)
        html = operation_html(self.operation)
        if html != self.summary.value:
            self.summary.value = html
        running = self.busy or (self.operation is not None and self.operation.running)
        self.upgrade_button.disabled = running
        self.rollback_button.disabled = running or not self._can_roll_back()

    def _can_roll_back(self) -> bool:
        last = self.operation
        return last is not None and last.operation == "upgrade" and last.outcome == "upgraded"

    # ---- actions -----------------------------------------------------------------------

    def ask(self, verb: str) -> None:
        self.pending = verb
        target = self.version.value.strip() or "the newest version on npm"
        with self.ctx.lock:
            self.question.value = f"<b>{esc(QUESTIONS[verb].format(target=target))}</b>"
            self.confirm.layout.display = None

    def cancelled(self) -> None:
        self.pending = None
        self.confirm.layout.display = "none"

    def confirmed(self) -> None:
        verb, self.pending = self.pending, None
        self.confirm.layout.display = "none"
        if verb is None:
            return
        version = self.version.value.strip() or None
        with self.ctx.lock:
            self.busy = True
            self.banner.note("Upgrading OpenCode ..." if verb == "upgrade" else "Rolling back ...")

        def work() -> None:
            try:
                if verb == "upgrade":
                    self.ctx.client.upgrade(version)
                else:
                    record = self.ctx.client.rollback()
                    self.banner.note(f"rollback: {record.outcome}", "ok", ttl=20.0)
            finally:
                self.busy = False
                self.refresh()

        self.in_background(work)


def operation_html(record: OperationRecord | None) -> str:
    """The operation's head line and a table of its steps."""
    if record is None:
        return "<b>Upgrades</b> <span class='nx-muted'>no upgrade yet</span>"
    outcome = record.outcome or f"running ({record.step})"
    head = (
        f"<b>Last {esc(record.operation)}</b> {esc(record.from_version)} &rarr; "
        f"{esc(record.to_version)}: <span class='nx-upgrade-outcome'>{esc(outcome)}</span>"
    )
    rows = []
    for entry in record.steps:
        took = f"{entry.ended - entry.started:.1f} s" if entry.ended is not None else "..."
        mark = {True: "ok", False: "failed", None: ""}[entry.ok]
        stamp = time.strftime("%H:%M:%S", time.localtime(entry.started))
        rows.append([esc(stamp), esc(entry.name), esc(took), esc(mark), esc(entry.detail)])
    table = table_html(["time", "step", "took", "", "detail"], rows, "nx-upgrade-steps")
    error = f"<div class='nx-upgrade-error'>{esc(record.error)}</div>" if record.error else ""
    aside = (
        f"<div class='nx-muted'>database kept aside in {esc(record.aside)}</div>"
        if record.aside
        else ""
    )
    return f"<div>{head}</div>{table}{error}{aside}"
