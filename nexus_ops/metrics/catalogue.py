"""What each metric is called for people and what unit it counts in, and how to write it.

One place for the names the figures' legends and the alerts show, and for the
units their numbers are written in (bytes in IEC units, seconds as ms or s,
percentages, whole counts, durations).

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


@dataclass(frozen=True)
class MetricInfo:
    """A metric's name for people and its unit (bytes, seconds, %, count, duration)."""

    name: str
    unit: str = ""


CATALOGUE: dict[str, MetricInfo] = {
    "opencode_server_status": MetricInfo("server status", "count"),  # 1 up, 0 down
    "opencode_server_uptime_seconds": MetricInfo("uptime", "duration"),
    "opencode_server_starts_total": MetricInfo("starts", "count"),
    "opencode_server_stops_total": MetricInfo("stops", "count"),
    "opencode_process_resident_memory_bytes": MetricInfo("server", "bytes"),
    "nexus_agent_resident_memory_bytes": MetricInfo("agent", "bytes"),
    "opencode_process_cpu_percent": MetricInfo("server", "%"),
    "nexus_agent_cpu_percent": MetricInfo("agent", "%"),
    "opencode_connections": MetricInfo("connections", "count"),
    "opencode_sessions": MetricInfo("sessions", "count"),
    "opencode_request_duration_seconds": MetricInfo("request duration", "seconds"),
}

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
