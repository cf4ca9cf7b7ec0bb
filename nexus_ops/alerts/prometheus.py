"""The same rules as Prometheus alerting rules (``promtool check rules`` passes them).

Each rule becomes one PromQL expression over the agent's ``/metrics``:

* ``last``: ``metric{match} > value``
* ``min``/``max``/``mean``/``pNN`` of a gauge: ``max by (job, instance)
  (max_over_time(metric{match}[window])) > value`` (``avg_over_time``,
  ``quantile_over_time(0.95, ...)``)
* ``pNN`` of the request histogram: ``histogram_quantile(0.95, sum by (job,
  instance, le) (rate(opencode_request_duration_seconds_bucket{match}[window]))) > value``
* ``increase`` and ``restart_rate``: ``sum by (job, instance)
  (increase(metric{match}[window])) > value``

Series are summed or picked per agent (``job``, ``instance``), so that one
Prometheus watching several agents alerts for each.
* ``absent``: ``absent_over_time(metric{match}[window])``

>>> from nexus_ops.alerts.rules import AlertRule
>>> expression(AlertRule(name="Down", metric="opencode_server_status", op="<", value=1))
'opencode_server_status < 1'
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from nexus_ops.alerts.rules import AlertRule, format_duration, format_number
from nexus_ops.metrics import catalogue as m

HISTOGRAMS = frozenset(e.metric for e in m.CATALOGUE.values() if e.kind == "histogram")
_OVER_TIME = {"min": "min_over_time", "max": "max_over_time", "mean": "avg_over_time"}
_QUANTILE = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
GROUP = "nexus-ops-agent"
BY = "by (job, instance)"
SCRAPE_GROUP = "nexus-ops-scrape"
SCRAPE_JOB = "nexus-ops"  # the job of deploy/prometheus/prometheus.yml


def selector(metric: str, match: Mapping[str, str]) -> str:
    """``metric{a="b"}`` with the label values quoted for PromQL."""
    if not match:
        return metric
    inner = ",".join(f"{name}={json.dumps(value)}" for name, value in sorted(match.items()))
    return f"{metric}{{{inner}}}"


def expression(rule: AlertRule) -> str:
    """The PromQL expression that is true (non-empty) when the rule's condition holds."""
    condition = _condition(rule)
    if not rule.only_while:
        return condition
    # absent_over_time() has no labels to join on; the other conditions keep the target's.
    join = "on ()" if rule.kind == "absent" else "on (job, instance)"
    return f"({condition}) and {join} {rule.only_while} == 1"


def _condition(rule: AlertRule) -> str:
    window = f"[{format_duration(rule.window)}]"
    if rule.kind == "absent":
        return f"absent_over_time({selector(rule.metric, rule.match)}{window})"
    threshold = f" {rule.op} {format_number(rule.value)}"
    if rule.aggregate == "last":
        return selector(rule.metric, rule.match) + threshold
    if rule.aggregate == "increase":
        return f"sum {BY} (increase({selector(rule.metric, rule.match)}{window}))" + threshold
    pick = "max" if rule.op.startswith(">") else "min"
    if rule.aggregate in _OVER_TIME:
        inner = f"{_OVER_TIME[rule.aggregate]}({selector(rule.metric, rule.match)}{window})"
        return f"{pick} {BY} ({inner})" + threshold
    quantile = _QUANTILE[rule.aggregate]
    if rule.metric in HISTOGRAMS:
        buckets = selector(f"{rule.metric}_bucket", rule.match)
        summed = f"sum by (job, instance, le) (rate({buckets}{window}))"
        return f"histogram_quantile({quantile}, {summed})" + threshold
    inner = f"quantile_over_time({quantile}, {selector(rule.metric, rule.match)}{window})"
    return f"{pick} {BY} ({inner})" + threshold


def prometheus_rule(rule: AlertRule) -> dict[str, Any]:
    """One entry of a Prometheus rule group."""
    entry: dict[str, Any] = {"alert": rule.name, "expr": expression(rule)}
    if rule.for_seconds:
        entry["for"] = format_duration(rule.for_seconds)
    if rule.keep_firing_for:
        entry["keep_firing_for"] = format_duration(rule.keep_firing_for)
    entry["labels"] = {"severity": rule.severity, **rule.labels}
    entry["annotations"] = {
        "summary": rule.summary or rule.describe(),
        "description": rule.description or f"nexus-ops rule: {rule.describe()}",
    }
    return entry


def agent_down_rule(job: str) -> dict[str, Any]:
    """The one rule only Prometheus can evaluate: it cannot scrape the agent itself."""
    return {
        "alert": "NexusOpsAgentDown",
        "expr": f"up{{job={json.dumps(job)}}} == 0",
        "for": "1m",
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": "The nexus-ops agent does not answer scrapes",
            "description": "Prometheus could not scrape the agent for 1 minute: the agent "
            "is down, unreachable, or refuses the token.",
        },
    }


def export_rules(rules: Iterable[AlertRule], group: str = GROUP, scrape_job: str = "") -> str:
    """A Prometheus rule file (YAML) holding every rule in one group.

    With ``scrape_job``, a second group alerts when Prometheus cannot scrape that job.
    """
    import yaml  # the agent evaluates rules without exporting them

    groups = [{"name": group, "rules": [prometheus_rule(r) for r in rules]}]
    if scrape_job:
        groups.append({"name": SCRAPE_GROUP, "rules": [agent_down_rule(scrape_job)]})
    document = {"groups": groups}
    header = (
        "# Generated by `nexus-ops alerts export-prometheus`; the agent evaluates the same rules.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000)
