"""The Alerts panel: every rule with its state, the webhooks' deliveries, the latest notices.

Firing alerts are red, pending ones orange, and the notifications the agent sent
(or failed to send) are listed newest first. Webhook URLs arrive masked from the
agent.

>>> state_class("firing"), state_class("pending"), state_class("inactive")
('nx-event-crash', 'nx-event-restart', 'nx-event')
"""

from __future__ import annotations

import time

import ipywidgets as widgets

from nexus_ops.alerts import AlertsView, ReceiverStatus, RuleStatus
from nexus_ops.alerts.notify import NotificationRecord
from nexus_ops.ui.base import Panel, table_html
from nexus_ops.ui.style import esc


def state_class(state: str) -> str:
    """The row class of an alert's state: firing red, pending orange."""
    return {"firing": "nx-event-crash", "pending": "nx-event-restart"}.get(state, "nx-event")


def _when(stamp: float | None) -> str:
    return esc(time.strftime("%H:%M:%S", time.localtime(stamp)) if stamp else None)


def rules_html(rules: list[RuleStatus]) -> str:
    """Firing first, then pending, then the rest: rule, state, since, value, condition."""
    if not rules:
        return "<p class='nx-muted'>No alert rules (NEXUS_ALERT_DEFAULT_RULES is off).</p>"
    order = {"firing": 0, "pending": 1, "resolved": 2, "inactive": 3}
    ranked = sorted(rules, key=lambda r: (order[r.state], r.rule.name))
    rows = [
        [
            f"<b>{esc(r.rule.name)}</b>",
            esc(r.state + (" (flapping)" if r.flapping else "")),
            _when(r.since),
            esc(None if r.value is None else r.rule.format_value(r.value)),
            esc(r.rule.severity),
            f"<code title='{esc(r.expression)}'>{esc(r.rule.readable())}</code>",
            esc(r.rule.summary),
        ]
        for r in ranked
    ]
    headers = ["rule", "state", "since", "value", "severity", "condition", "summary"]
    return table_html(headers, rows, "nx-alerts-table", [state_class(r.state) for r in ranked])


NO_WEBHOOKS = (
    "<div class='nx-muted nx-no-webhooks'>"
    "<p>No webhooks: alerts show here but notify no one. To add one, set the URLs to "
    "notify (comma-separated) in the agent's environment or <code>.env</code>, then "
    "restart the agent (<code>nexus-ops agent stop</code>, <code>nexus-ops agent "
    "start</code>):</p>"
    "<code class='nx-example'>NEXUS_ALERT_WEBHOOK_URLS=https://hooks.example.com/nexus-ops</code>"
    "<p>A bearer token goes in <code>NEXUS_ALERT_WEBHOOK_TOKEN</code>; webhooks with tokens "
    "and headers of their own go under <code>webhooks:</code> in the YAML file named by "
    "<code>NEXUS_ALERTS_FILE</code>. See docs/alerts.md (Notifications).</p></div>"
)


def receivers_html(receivers: list[ReceiverStatus]) -> str:
    if not receivers:
        return NO_WEBHOOKS
    rows = [
        [esc(r.receiver), esc(r.delivered), esc(r.failed), _when(r.last_attempt), esc(r.last_error)]
        for r in receivers
    ]
    classes = ["nx-event-crash" if r.failed else "nx-event" for r in receivers]
    headers = ["webhook", "delivered", "failed", "last attempt", "last error"]
    return table_html(headers, rows, "nx-receivers-table", classes)


def recent_html(recent: list[NotificationRecord]) -> str:
    """The notifications, newest first."""
    if not recent:
        return "<p class='nx-muted'>No notification sent yet.</p>"
    newest_first = list(reversed(recent))
    rows = [
        [
            _when(n.time),
            esc(n.rule),
            esc(n.status),
            esc(n.summary),
            esc(", ".join(n.failed) or None),
        ]
        for n in newest_first
    ]
    classes = [state_class("firing" if n.status == "firing" else "inactive") for n in newest_first]
    return table_html(["time", "rule", "sent", "summary", "failed to"], rows, "nx-recent", classes)


class AlertsPanel(Panel[AlertsView]):
    """The alert rules and their states, refreshed every few seconds.

    >>> # panel = AlertsPanel(ctx); panel.refresh(); panel.view.rules[0].state
    """

    title = "Alerts"
    interval = 3.0
    css = "nx-alerts"

    def build(self) -> widgets.Widget:
        self.view: AlertsView | None = None
        self.rules = widgets.HTML(rules_html([]))
        self.rules.add_class("nx-alerts-rules")
        self.receivers = widgets.HTML()
        self.receivers.add_class("nx-alerts-receivers")
        self.recent = widgets.HTML()
        self.recent.add_class("nx-alerts-recent")
        sections = [
            widgets.HTML(f"<div class='nx-section'>{t}</div>")
            for t in ("Webhooks", "Latest notifications")
        ]
        return widgets.VBox([self.rules, sections[0], self.receivers, sections[1], self.recent])

    def fetch(self) -> AlertsView:
        return self.ctx.client.alerts()

    def show(self, data: AlertsView) -> None:
        self.view = data
        for widget, html in (
            (self.rules, rules_html(data.rules)),
            (self.receivers, receivers_html(data.receivers)),
            (self.recent, recent_html(data.recent)),
        ):
            if widget.value != html:
                widget.value = html
