"""Every metric of nexus-ops, declared once, and how to write its values for people.

Each metric is declared here with its Prometheus name, type, help and label
names, its name for people (the figures' legends, the alerts) and the unit its
numbers are written in (bytes in IEC units, seconds as ms or s, percentages,
whole counts, durations). The sampler, ``/metrics``, the figures and the alert
rules name metrics through these declarations only.

>>> format_metric("opencode_process_resident_memory_bytes", 3.99987e8)
'381.5 MiB'
>>> format_metric("opencode_request_duration_seconds", 0.0424714)
'42 ms'
>>> series_name("opencode_request_duration_seconds", "q=p95,path=/global/health")
'p95 · health checks'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Kind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class MetricInfo:
    """One metric: its name for people and unit (bytes, seconds, %, count, duration),
    and, for a declared one, its Prometheus name, type, help and label names.

    ``exposed`` is False for a series the sampler stores but ``/metrics`` leaves
    to PromQL (the CPU percents: ``rate()`` of the CPU seconds).
    """

    name: str
    unit: str = ""
    metric: str = ""
    kind: Kind = "gauge"
    help: str = ""
    labels: tuple[str, ...] = ()
    exposed: bool = True


CATALOGUE: dict[str, MetricInfo] = {}


def _declare(
    metric: str,
    kind: Kind,
    help: str,
    name: str,
    unit: str = "",
    labels: tuple[str, ...] = (),
    exposed: bool = True,
) -> MetricInfo:
    entry = MetricInfo(name, unit, metric, kind, help, labels, exposed)
    CATALOGUE[metric] = entry
    return entry


# The managed server, from the supervisor.
SERVER_STATUS = _declare(
    "opencode_server_status",
    "gauge",
    "1 when the server is running and healthy, else 0.",
    "server status",
    "count",
)
DESIRED_RUNNING = _declare(
    "opencode_server_desired_running",
    "gauge",
    "1 while the server should be serving: wanted running, not in a planned start.",
    "desired running",
)
SERVER_STATE = _declare(
    "opencode_server_state",
    "gauge",
    "1 for the server's current state.",
    "server state",
    labels=("state",),
)
SERVER_STARTS = _declare(
    "opencode_server_starts_total", "counter", "Server processes started.", "starts", "count"
)
SERVER_STOPS = _declare(
    "opencode_server_stops_total", "counter", "Server processes that ended.", "stops", "count"
)
SERVER_RESTARTS = _declare(
    "opencode_server_restarts_total",
    "counter",
    "Restarts by reason.",
    "restarts",
    "count",
    labels=("reason",),
)
SERVER_UPTIME = _declare(
    "opencode_server_uptime_seconds",
    "gauge",
    "Seconds since the server process started.",
    "uptime",
    "duration",
)
REQUEST_DURATION = _declare(
    "opencode_request_duration_seconds",
    "histogram",
    "Duration of the agent's requests to the OpenCode server.",
    "request duration",
    "seconds",
    labels=("path", "outcome"),
)

# The server's process tree, its sockets and sessions, from the sampler.
PROCESS_CPU_SECONDS = _declare(
    "opencode_process_cpu_seconds_total",
    "counter",
    "CPU time of the server's process tree.",
    "server CPU time",
    "seconds",
)
PROCESS_CPU_PERCENT = _declare(
    "opencode_process_cpu_percent",
    "gauge",
    "CPU of the server's process tree, percent of one core.",
    "server",
    "%",
    exposed=False,
)
PROCESS_MEMORY = _declare(
    "opencode_process_resident_memory_bytes",
    "gauge",
    "Resident memory of the server's process tree.",
    "server",
    "bytes",
)
PROCESS_THREADS = _declare(
    "opencode_process_threads",
    "gauge",
    "Threads of the server's process tree.",
    "threads",
    "count",
)
PROCESS_OPEN_FDS = _declare(
    "opencode_process_open_fds",
    "gauge",
    "Open file descriptors of the server's process tree.",
    "open files",
    "count",
)
PROCESS_CHILDREN = _declare(
    "opencode_process_children",
    "gauge",
    "Descendant processes of the server.",
    "children",
    "count",
)
CONNECTIONS = _declare(
    "opencode_connections",
    "gauge",
    "TCP sockets of the server on its port, by state.",
    "connections",
    "count",
    labels=("state",),
)
SESSIONS = _declare(
    "opencode_sessions",
    "gauge",
    "Sessions of the server by status (idle, busy, retry).",
    "sessions",
    "count",
    labels=("status",),
)

# The models' usage through the server, from its event stream (nexus_ops.metrics.usage).
USAGE_TOKENS = _declare(
    "opencode_usage_tokens_total",
    "counter",
    "Tokens of assistant messages by provider, model and kind "
    "(input, output, reasoning, cache_read, cache_write).",
    "tokens",
    "count",
    labels=("provider", "model", "kind"),
)
USAGE_COST = _declare(
    "opencode_usage_cost_total",
    "counter",
    "Cost of assistant messages by provider and model, in the currency of the model's prices.",
    "cost",
    labels=("provider", "model"),
)
USAGE_MESSAGES = _declare(
    "opencode_usage_messages_total",
    "counter",
    "Assistant messages by provider and model.",
    "assistant messages",
    "count",
    labels=("provider", "model"),
)
PROMPTS_IN_FLIGHT = _declare(
    "opencode_prompts_in_flight",
    "gauge",
    "Assistant messages under way (started, not completed).",
    "prompts in flight",
    "count",
)
TOOL_CALLS = _declare(
    "opencode_tool_calls_total",
    "counter",
    "Tool calls that finished, by tool and outcome (completed, error).",
    "tool calls",
    "count",
    labels=("tool", "outcome"),
)
PROVIDER_ERRORS = _declare(
    "opencode_provider_errors_total",
    "counter",
    "Assistant messages that ended with an error of their provider, by provider and model.",
    "provider errors",
    "count",
    labels=("provider", "model"),
)

# The agent itself.
AGENT_INFO = _declare(
    "nexus_agent_info", "gauge", "Agent version.", "agent version", labels=("version",)
)
AGENT_CPU_SECONDS = _declare(
    "nexus_agent_cpu_seconds_total", "counter", "Agent CPU time.", "agent CPU time", "seconds"
)
AGENT_CPU_PERCENT = _declare(
    "nexus_agent_cpu_percent",
    "gauge",
    "CPU of the agent, percent of one core.",
    "agent",
    "%",
    exposed=False,
)
AGENT_MEMORY = _declare(
    "nexus_agent_resident_memory_bytes", "gauge", "Agent resident memory.", "agent", "bytes"
)
AGENT_UPTIME = _declare(
    "nexus_agent_uptime_seconds",
    "gauge",
    "Seconds since the agent started.",
    "agent uptime",
    "duration",
)
METRICS_STORE_BYTES = _declare(
    "nexus_agent_metrics_store_bytes",
    "gauge",
    "Size of metrics.db on disk.",
    "metrics.db",
    "bytes",
)
SAMPLES_DROPPED = _declare(
    "nexus_agent_metrics_samples_dropped_total",
    "counter",
    "Samples refused (out of order or NaN).",
    "samples dropped",
    "count",
)
STORE_PROBLEMS = _declare(
    "nexus_agent_store_problems_total",
    "counter",
    "Databases of the agent found deleted, replaced or damaged (and rebuilt).",
    "store problems",
    "count",
    labels=("store",),
)

# Backups, from the backup history and the backups on disk.
BACKUP_LAST_SUCCESS = _declare(
    "nexus_backup_last_success_timestamp_seconds",
    "gauge",
    "Unix time the last successful backup finished (0: never).",
    "last backup",
)
BACKUP_LAST_SIZE = _declare(
    "nexus_backup_last_size_bytes",
    "gauge",
    "Archive size of the last successful backup.",
    "last backup size",
    "bytes",
)
BACKUP_LAST_DURATION = _declare(
    "nexus_backup_last_duration_seconds",
    "gauge",
    "Seconds the last successful backup took.",
    "last backup duration",
    "seconds",
)
BACKUP_OPERATIONS = _declare(
    "nexus_backup_operations_total",
    "counter",
    "Backup operations run.",
    "backup operations",
    "count",
    labels=("operation", "outcome"),
)
BACKUPS = _declare(
    "nexus_backups", "gauge", "Backups on disk.", "backups", "count", labels=("kind",)
)
BACKUPS_SIZE = _declare(
    "nexus_backups_size_bytes",
    "gauge",
    "Bytes of all backups on disk.",
    "backups size",
    "bytes",
)

# Upgrades of OpenCode (nexus_ops/upgrade), counted in nexus.db since NEXUS_HOME began.
UPGRADES = _declare(
    "opencode_upgrades_total",
    "counter",
    "Upgrades of OpenCode by outcome (upgraded, rolled back, failed, abandoned).",
    "upgrades",
    "count",
    labels=("outcome",),
)
ROLLBACKS = _declare(
    "opencode_rollbacks_total",
    "counter",
    "Rollbacks of OpenCode upgrades, automatic or by hand.",
    "rollbacks",
    "count",
)


def exposed() -> list[MetricInfo]:
    """The catalogue's metrics that ``/metrics`` shows."""
    return [entry for entry in CATALOGUE.values() if entry.exposed]


# The server's paths the agent asks, by what the requests are for.
REQUEST_PATHS = {
    "/global/health": "health checks",
    "/session/status": "session status",
    "/session": "session list",
}

_IEC = ("B", "KiB", "MiB", "GiB", "TiB")


def info(metric: str) -> MetricInfo:
    """The catalogue's entry of ``metric``; else a name and unit read off the metric's name."""
    known = CATALOGUE.get(metric)
    if known is not None:
        return known
    name = metric.removeprefix("opencode_").removeprefix("nexus_")
    for suffix, unit in (("_bytes", "bytes"), ("_seconds", "seconds"), ("_percent", "%")):
        if name.endswith(suffix):
            return MetricInfo(name.removesuffix(suffix).replace("_", " "), unit)
    count = name.endswith("_total")
    return MetricInfo(name.removesuffix("_total").replace("_", " "), "count" if count else "")


def series_name(metric: str, labels: str, with_metric: bool = False) -> str:
    """A legend name: the label values joined by `` · `` (a path by what it is for).

    ``with_metric`` puts the metric's name first (a panel of several metrics).
    """
    values = [_label_value(part) for part in labels.split(",") if "=" in part]
    parts = ([info(metric).name] if with_metric or not values else []) + values
    return " · ".join(parts)


def _label_value(pair: str) -> str:
    name, value = pair.split("=", 1)
    return REQUEST_PATHS.get(value, value) if name == "path" else value


def format_metric(metric: str, value: float, decimals: int = 1) -> str:
    """``value`` of ``metric`` in its unit, for people."""
    return format_value(value, info(metric).unit, decimals)


def format_value(value: float, unit: str, decimals: int = 0) -> str:
    """``1.5e9, 'bytes'`` -> ``'1.4 GiB'``; ``3725, 'duration'`` -> ``'1h 2m'``;
    ``0.042, 'seconds'`` -> ``'42 ms'``; ``4.25, '%'`` -> ``'4%'``."""
    if not math.isfinite(value):
        return "-"
    if unit == "bytes":
        return _bytes(value, decimals)
    if unit == "duration":
        return _duration(value)
    if unit == "seconds":
        return f"{value * 1000:,.0f} ms" if abs(value) < 1 else f"{value:,.{max(decimals, 1)}f} s"
    whole = unit == "count" and float(value).is_integer()
    text = f"{value:,.{0 if whole else decimals}f}"
    if unit == "%":
        return text + "%"
    return f"{text} {unit}".strip() if unit not in ("", "count") else text


def _bytes(value: float, decimals: int) -> str:
    power = iec_power(value)
    shown = value / 1024**power
    return f"{shown:.{decimals if power else 0}f} {_IEC[power]}"


def iec_power(value: float) -> int:
    """The power of 1024 that writes ``value`` bytes with 1 to 1023 before the unit."""
    power = 0
    while abs(value) >= 1024 and power < len(_IEC) - 1:
        value /= 1024
        power += 1
    return power


def iec_unit(power: int) -> str:
    """``2`` -> ``'MiB'``."""
    return _IEC[power]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"
