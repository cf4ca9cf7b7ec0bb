"""Alerts: rules over the agent's samples, their states, the journal and webhooks.

* ``rules``: the rule and webhook types, the built-in rules, the YAML file
* ``window``: the recent samples the rules look at
* ``engine``: one alert's states (inactive, pending, firing, resolved) and flap damping
* ``notify``: webhook deliveries with retries; failures recorded in the journal
* ``service``: the agent's evaluator and the API's view of it
* ``prometheus``: the same rules as Prometheus alerting rules

>>> from nexus_ops.alerts import AlertRule
>>> AlertRule(name="Down", metric="opencode_server_status", op="<", value=1).describe()
'opencode_server_status < 1'
"""

from __future__ import annotations

from nexus_ops.alerts.engine import AlertTrack, Transition
from nexus_ops.alerts.notify import Notifier, ReceiverStatus, Webhook
from nexus_ops.alerts.prometheus import export_rules
from nexus_ops.alerts.rules import (
    AlertRule,
    AlertsConfig,
    WebhookConfig,
    default_rules,
    load_config,
)
from nexus_ops.alerts.service import AlertService, AlertsView, RuleStatus, describe_rule_status

__all__ = [
    "AlertRule",
    "AlertService",
    "AlertTrack",
    "AlertsConfig",
    "AlertsView",
    "Notifier",
    "ReceiverStatus",
    "RuleStatus",
    "Transition",
    "Webhook",
    "WebhookConfig",
    "default_rules",
    "describe_rule_status",
    "export_rules",
    "load_config",
]
