"""Alert rules: what to watch, read from the settings and an optional YAML file.

Three kinds of rule:

* ``threshold``: a metric (its latest value, or an aggregate over a window:
  ``min``, ``max``, ``mean``, ``p50``/``p90``/``p95``/``p99``, ``increase``) is
  over or under a value;
* ``absent``: no series of a metric has been seen within ``window`` seconds;
* ``restart_rate``: the server was started more than ``value`` times within
  ``window`` seconds (a crash loop).

Every rule waits ``for`` seconds in ``pending`` before it fires, and once firing
stays so until its condition has been false for ``keep_firing_for`` seconds (the
same two words Prometheus uses). Durations are seconds or ``30s``/``5m``/``1h``.
A rule with ``only_while: <gauge>`` holds only while that gauge's latest value is
1: the built-in server-down rule names ``opencode_server_desired_running``, so a
server an operator stopped is not an alert.

The YAML file (``NEXUS_ALERTS_FILE``)::

    defaults: true            # also the built-in rules (default true)
    rules:
      - name: OpenCodeManySessions
        metric: opencode_sessions
        match: {status: busy}
        op: ">"
        value: 20
        for: 2m
        severity: warning
        summary: More than 20 busy sessions
    webhooks:
      - url: https://alerts.example/hook
        token: s3cret          # sent as "Authorization: Bearer ..."; never shown

>>> rule = AlertRule(name="Busy", metric="opencode_sessions", value=20, **{"for": "2m"})
>>> rule.for_seconds, rule.describe()
(120.0, 'opencode_sessions > 20 for 2m')
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError, model_validator

from nexus_ops.config import Settings
from nexus_ops.errors import ConfigError
from nexus_ops.metrics import catalogue as m
from nexus_ops.models import Frozen

RuleKind = Literal["threshold", "absent", "restart_rate"]
Op = Literal[">", ">=", "<", "<="]
Aggregate = Literal["last", "min", "max", "mean", "p50", "p90", "p95", "p99", "increase"]
Severity = Literal["critical", "warning", "info"]
STARTS_METRIC = m.SERVER_STARTS.metric
_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$"
)
_METRIC_NAME = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
_ALERT_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a text like ``90``, ``30s``, ``5m``, ``1h30m``."""
    if isinstance(value, bool):
        raise ValueError("is not a duration (e.g. 30s, 5m or 1h)")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.match(text)
            if not text or match is None or not any(match.groups()):
                raise ValueError(f"{value!r} is not a duration (e.g. 30s, 5m or 1h)") from None
            hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
            seconds = hours * 3600 + minutes * 60 + secs
    else:
        raise ValueError("is not a duration (e.g. 30s, 5m or 1h)")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a duration of zero or more seconds")
    return seconds


def format_duration(seconds: float) -> str:
    """``120.0`` -> ``2m``; ``90`` -> ``90s``; ``0.5`` -> ``500ms`` (Prometheus's form)."""
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    if whole and whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole and whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{whole}s"


def format_number(value: float) -> str:
    """A threshold exactly, in PromQL's form: ``3221225472``, ``0.5``."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e18 else repr(value)


Seconds = Annotated[float, BeforeValidator(parse_duration)]


class AlertRule(Frozen):
    """One alert rule (see the module's docstring for the kinds and fields)."""

    name: str = Field(pattern=_ALERT_NAME, max_length=100, description="Alert name.")
    kind: RuleKind = "threshold"
    metric: str = Field("", description="Metric name; restart_rate: the starts counter.")
    match: dict[str, str] = Field(
        default_factory=dict, description="Labels a series must have to count."
    )
    op: Op = ">"
    value: float = Field(0.0, description="Threshold (restart_rate: most starts allowed).")
    aggregate: Aggregate = "last"
    window: Seconds = Field(60.0, description="Seconds an aggregate, absence or rate looks at.")
    for_seconds: Seconds = Field(
        0.0,
        validation_alias=AliasChoices("for", "for_seconds"),
        description="Seconds the condition must hold before the alert fires.",
    )
    keep_firing_for: Seconds = Field(
        0.0, description="Seconds the condition must be clear before a firing alert resolves."
    )
    only_while: str = Field(
        "",
        description="A gauge whose latest value must be 1 for the rule to hold "
        f"(e.g. {m.DESIRED_RUNNING.metric}).",
    )
    severity: Severity = "warning"
    summary: str = Field("", max_length=500)
    description: str = Field("", max_length=2000)
    labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels of the notification."
    )

    @model_validator(mode="before")
    @classmethod
    def _restart_rate(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "restart_rate":
            data = {"metric": STARTS_METRIC, **data, "aggregate": "increase", "op": ">"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> AlertRule:
        for name in [self.metric] + ([self.only_while] if self.only_while else []):
            if not re.match(_METRIC_NAME, name):
                raise ValueError(f"metric {name!r} is not a metric name (e.g. {m.SESSIONS.metric})")
        if not math.isfinite(self.value):
            raise ValueError("value must be a finite number")
        if self.window <= 0:
            raise ValueError("window must be more than 0 seconds")
        for label in [*self.match, *self.labels]:
            if not _LABEL_NAME.match(label):
                raise ValueError(f"label {label!r} is not a label name (letters, digits, _)")
        return self

    def describe(self, number: Callable[[float], str] = format_number) -> str:
        """The rule in one line, e.g. ``opencode_server_status < 1 for 30s``; ``number``
        writes the threshold (PromQL's exact form by default)."""
        selector = self.metric + _matchers(self.match)
        if self.kind == "absent":
            text = f"absent({selector}) over {format_duration(self.window)}"
        elif self.kind == "restart_rate":
            text = f"more than {number(self.value)} starts in {format_duration(self.window)}"
        elif self.aggregate == "last":
            text = f"{selector} {self.op} {number(self.value)}"
        else:
            span = f"[{format_duration(self.window)}]"
            text = f"{self.aggregate}({selector}{span}) {self.op} {number(self.value)}"
        if self.only_while:
            text += f" while {self.only_while} == 1"
        return text + (f" for {format_duration(self.for_seconds)}" if self.for_seconds else "")

    def readable(self) -> str:
        """The rule with its threshold in its metric's unit, for people (``> 3 GiB``)."""
        return self.describe(number=lambda value: format_threshold(self.metric, value))

    def format_value(self, value: float) -> str:
        """A value of the rule's metric in its unit: ``4.2e8`` -> ``400.5 MiB``."""
        return m.format_metric(self.metric, value)


def format_threshold(metric: str, value: float) -> str:
    """A threshold in ``metric``'s unit, without the decimals of a whole one.

    >>> format_threshold("opencode_process_resident_memory_bytes", 3221225472)
    '3 GiB'
    >>> format_threshold("opencode_process_cpu_percent", 90), format_threshold("x_seconds", 2.5)
    ('90%', '2.5 s')
    """
    text = m.format_metric(metric, value)
    return re.sub(r"^(-?[\d,]+)\.0+(?=\D|$)", r"\1", text)


def _matchers(match: Mapping[str, str]) -> str:
    if not match:
        return ""
    return "{" + ",".join(f"{k}={v!r}" for k, v in sorted(match.items())) + "}"


class WebhookConfig(Frozen):
    """A webhook that receives notifications (an Alertmanager-style JSON POST)."""

    url: str = Field(pattern=r"^https?://", description="http(s) URL; credentials allowed.")
    token: str | None = Field(None, description="Bearer token sent with each notification.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    timeout: Seconds | None = Field(
        None,
        description="Seconds one delivery to this webhook may take, all of it "
        "(default NEXUS_ALERT_WEBHOOK_TIMEOUT).",
    )

    @model_validator(mode="after")
    def _timeout(self) -> WebhookConfig:
        if self.timeout is not None and not 0 < self.timeout <= 120:
            raise ValueError("timeout must be more than 0 and at most 120 seconds (e.g. 5s)")
        return self


class AlertsConfig(Frozen):
    """Everything the alert evaluator needs: rules and receivers."""

    rules: list[AlertRule] = Field(default_factory=list)
    webhooks: list[WebhookConfig] = Field(default_factory=list)


class _FileConfig(Frozen):
    defaults: bool = True
    rules: list[AlertRule] = Field(default_factory=list)
    webhooks: list[WebhookConfig] = Field(default_factory=list)


def default_rules(settings: Settings) -> list[AlertRule]:
    """The built-in rules: server down, restart rate, memory, request latency and a
    rolled-back upgrade."""
    memory = settings.alert_memory_mb
    return [
        AlertRule(
            name="OpenCodeServerDown",
            metric=m.SERVER_STATUS.metric,
            op="<",
            value=1,
            only_while=m.DESIRED_RUNNING.metric,
            for_seconds=30,
            keep_firing_for=10,
            severity="critical",
            summary="The OpenCode server is down",
            description="The managed server has not been running and healthy for 30 s "
            "although it should run; `nexus-ops events` shows why.",
        ),
        AlertRule(
            name="OpenCodeRestartRate",
            kind="restart_rate",
            value=3,
            window=900,
            severity="warning",
            summary="The OpenCode server restarts often",
            description="More than 3 starts in 15 minutes: a crash loop. Read the server's log "
            "(`nexus-ops server logs`) and the restart reasons (`nexus-ops events`).",
        ),
        AlertRule(
            name="OpenCodeHighMemory",
            metric=m.PROCESS_MEMORY.metric,
            value=memory * 1024 * 1024,
            for_seconds=300,
            keep_firing_for=60,
            severity="warning",
            summary=f"The OpenCode server holds more than {memory} MiB",
            description="Resident memory of the server's process tree has stayed over "
            f"{memory} MiB for 5 minutes (NEXUS_ALERT_MEMORY_MB); a restart frees it.",
        ),
        AlertRule(
            name="OpenCodeRequestLatency",
            metric=m.REQUEST_DURATION.metric,
            aggregate="p95",
            window=300,
            value=settings.alert_latency_p95,
            for_seconds=300,
            keep_firing_for=60,
            severity="warning",
            summary="The OpenCode server answers slowly",
            description="The 95th percentile of the agent's requests to the server has been "
            f"over {settings.alert_latency_p95:g} s for 5 minutes (NEXUS_ALERT_LATENCY_P95).",
        ),
        AlertRule(
            name="OpenCodeRolledBack",
            metric=m.ROLLBACKS.metric,
            aggregate="increase",
            window=3600,
            value=0,
            severity="warning",
            summary="An OpenCode upgrade was rolled back",
            description="An upgrade failed its health gate or probation, or was rolled back "
            "by hand, within the last hour; `nexus-ops opencode upgrade --status` shows why "
            "and where the new version's database was kept.",
        ),
    ]


def load_config(settings: Settings) -> AlertsConfig:
    """Rules and webhooks from the settings and ``NEXUS_ALERTS_FILE``; raise ConfigError."""
    from_file = _read_file(settings.alerts_file) if settings.alerts_file else _FileConfig()
    rules = default_rules(settings) if settings.alert_default_rules and from_file.defaults else []
    by_name = {rule.name: rule for rule in rules}
    by_name.update({rule.name: rule for rule in from_file.rules})  # a file's rule replaces one
    webhooks = [
        WebhookConfig(url=url.strip(), token=settings.alert_webhook_token)
        for url in settings.alert_webhook_urls.split(",")
        if url.strip()
    ]
    return AlertsConfig(rules=list(by_name.values()), webhooks=webhooks + from_file.webhooks)


def _read_file(path: Path) -> _FileConfig:
    import yaml  # only for an alerts file: the agent without one does not load it

    where = f"NEXUS_ALERTS_FILE={path}"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"{where} cannot be read ({exc.strerror})",
            hint="point NEXUS_ALERTS_FILE at a readable YAML file, or unset it",
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{where} is not valid YAML: {exc}", hint="fix the YAML syntax at the line shown"
        ) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where} must hold a mapping with `rules:` and `webhooks:`",
            hint="see `nexus-ops alerts --help` and docs/alerts.md for the file's form",
        )
    try:
        return _FileConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"{where} has invalid rules:\n" + "\n".join(_describe(raw, e) for e in exc.errors()),
            hint="fix the fields named above (durations: 30s, 5m, 1h; ops: > >= < <=)",
        ) from exc


def _describe(raw: Mapping[str, Any], error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    where = ".".join(loc) or "(top)"
    if len(loc) >= 2 and loc[0] in ("rules", "webhooks") and loc[1].isdigit():
        items = raw.get(loc[0]) or []
        index = int(loc[1])
        item = items[index] if index < len(items) and isinstance(items[index], dict) else {}
        label = item.get("name") or item.get("url", "")
        where = f"{loc[0]}[{index}]" + (f" ({label})" if loc[0] == "rules" and label else "")
        where += "".join(f".{part}" for part in loc[2:])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"  - {where}: {message}"
