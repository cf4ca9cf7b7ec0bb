"""The agent's ``/metrics``: Prometheus text format (prometheus_client).

The seed's metrics come from the supervisor's live state at scrape time (a custom
collector, so a scrape never sees stale gauges); request durations are a
histogram observed on every request the agent makes to the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nexus_ops.metrics.sampler import DESIRED_METRIC, Reading
from nexus_ops.models import Counters, ServerState, ServerStatus
from nexus_ops.process import self_usage

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerCollector(Collector):
    """Status, starts, stops and uptime of the managed server, read at scrape time."""

    def __init__(
        self, status: Callable[[], ServerStatus], counters: Callable[[], Counters]
    ) -> None:
        self._status = status
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        counters = self._counters()
        up = GaugeMetricFamily(
            "opencode_server_status", "1 when the server is running and healthy, else 0."
        )
        up.add_metric([], 1.0 if status.healthy else 0.0)
        yield up
        state = GaugeMetricFamily(
            "opencode_server_state", "1 for the server's current state.", labels=["state"]
        )
        for value in ServerState:
            state.add_metric([value.value], 1.0 if status.state is value else 0.0)
        yield state
        starts = CounterMetricFamily("opencode_server_starts", "Server processes started.")
        starts.add_metric([], float(counters.starts))
        yield starts
        stops = CounterMetricFamily("opencode_server_stops", "Server processes that ended.")
        stops.add_metric([], float(counters.stops))
        yield stops
        restarts = CounterMetricFamily(
            "opencode_server_restarts", "Restarts by reason.", labels=["reason"]
        )
        for reason, count in sorted(counters.restarts_by_reason.items()):
            restarts.add_metric([reason], float(count))
        yield restarts
        uptime = GaugeMetricFamily(
            "opencode_server_uptime_seconds", "Seconds since the server process started."
        )
        uptime.add_metric([], status.uptime_seconds)
        yield uptime


class AgentCollector(Collector):
    """The agent's own process: CPU, memory, uptime and version."""

    def __init__(self, version: str) -> None:
        self._version = version
        self._started = time.time()

    def collect(self) -> Iterator[Metric]:
        cpu_seconds, rss = self_usage()
        info = GaugeMetricFamily("nexus_agent_info", "Agent version.", labels=["version"])
        info.add_metric([self._version], 1.0)
        yield info
        cpu_total = CounterMetricFamily("nexus_agent_cpu_seconds", "Agent CPU time.")
        cpu_total.add_metric([], cpu_seconds)
        yield cpu_total
        memory = GaugeMetricFamily("nexus_agent_resident_memory_bytes", "Agent resident memory.")
        memory.add_metric([], float(rss))
        yield memory
        uptime = GaugeMetricFamily("nexus_agent_uptime_seconds", "Seconds since the agent started.")
        uptime.add_metric([], time.time() - self._started)
        yield uptime


class Exposition:
    """The agent's registry: collectors plus the request-duration histogram.

    >>> from nexus_ops.models import Counters, ServerStatus, ServerState
    >>> expo = Exposition(lambda: ServerStatus(state=ServerState.STOPPED, desired="stopped",
    ...                   port=4096), Counters, version="0.1.0")
    >>> b"opencode_server_status 0.0" in expo.render()
    True
    """

    def __init__(
        self, status: Callable[[], ServerStatus], counters: Callable[[], Counters], version: str
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ServerCollector(status, counters))
        self.registry.register(AgentCollector(version))
        self.request_duration = Histogram(
            "opencode_request_duration_seconds",
            "Duration of the agent's requests to the OpenCode server.",
            labelnames=["path", "outcome"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.store_problems = Counter(
            "nexus_agent_store_problems",
            "Databases of the agent found deleted, replaced or damaged (and rebuilt).",
            labelnames=["store"],
            registry=self.registry,
        )
        for store in ("nexus.db", "metrics.db"):
            self.store_problems.labels(store=store)  # shown at 0 before any problem

    def count_store_problem(self, store: str) -> None:
        self.store_problems.labels(store=store).inc()

    def observe_request(self, path: str, seconds: float, ok: bool) -> None:
        self.request_duration.labels(path=path, outcome="ok" if ok else "error").observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class SamplerCollector(Collector):
    """The process tree, its sockets and sessions from the sampler's latest reading,
    and the size of the sample store.

    Status, uptime, starts and the agent's own CPU and memory come from the
    collectors above; the CPU percents the sampler keeps are left to PromQL's
    ``rate()``.
    """

    GAUGES = (
        ("opencode_process_resident_memory_bytes", "Resident memory of the server's process tree."),
        ("opencode_process_threads", "Threads of the server's process tree."),
        ("opencode_process_open_fds", "Open file descriptors of the server's process tree."),
        ("opencode_process_children", "Descendant processes of the server."),
    )

    def __init__(
        self,
        latest: Callable[[], Reading | None],
        store: Callable[[], tuple[int, int]],
        wanted: Callable[[], bool],
    ) -> None:
        self._latest = latest
        self._store = store
        self._wanted = wanted

    def collect(self) -> Iterator[Metric]:
        reading = self._latest()
        values = reading.values if reading else []
        # Wanted running now (a stop counts at once) and, at the last sample, not in a
        # start that an operator or the agent asked for: those are no outage.
        desired = GaugeMetricFamily(
            DESIRED_METRIC,
            "1 while the server should be serving: wanted running, not in a planned start.",
        )
        sampled = reading.value(DESIRED_METRIC) if reading else None
        desired.add_metric([], 1.0 if self._wanted() and sampled == 1.0 else 0.0)
        yield desired
        cpu = CounterMetricFamily(
            "opencode_process_cpu_seconds", "CPU time of the server's process tree."
        )
        for metric, _, value in values:
            if metric == "opencode_process_cpu_seconds_total":
                cpu.add_metric([], value)
        yield cpu
        for name, text in self.GAUGES:
            gauge = GaugeMetricFamily(name, text)
            for metric, _, value in values:
                if metric == name:
                    gauge.add_metric([], value)
            yield gauge
        yield _labelled(
            values,
            "opencode_connections",
            "state",
            "TCP sockets of the server on its port, by state.",
        )
        yield _labelled(
            values,
            "opencode_sessions",
            "status",
            "Sessions of the server by status (idle, busy, retry).",
        )
        size, dropped = self._store()
        store = GaugeMetricFamily("nexus_agent_metrics_store_bytes", "Size of metrics.db on disk.")
        store.add_metric([], float(size))
        yield store
        lost = CounterMetricFamily(
            "nexus_agent_metrics_samples_dropped", "Samples refused (out of order or NaN)."
        )
        lost.add_metric([], float(dropped))
        yield lost


def _labelled(
    values: list[tuple[str, dict[str, str], float]], name: str, label: str, text: str
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=[label])
    for metric, labels, value in values:
        if metric == name:
            family.add_metric([labels.get(label, "")], value)
    return family
