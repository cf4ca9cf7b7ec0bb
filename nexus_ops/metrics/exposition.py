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

from nexus_ops.metrics import catalogue as m
from nexus_ops.metrics.catalogue import MetricInfo
from nexus_ops.metrics.sampler import Reading
from nexus_ops.models import Counters, ServerState, ServerStatus
from nexus_ops.process import self_usage

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def family(
    entry: MetricInfo, value: float | None = None
) -> GaugeMetricFamily | CounterMetricFamily:
    """An empty family of a catalogue's gauge or counter (its name, help and labels);
    with ``value``, one unlabelled sample of it.

    >>> family(m.SERVER_STARTS, 3.0).samples[0].name
    'opencode_server_starts_total'
    """
    kind = CounterMetricFamily if entry.kind == "counter" else GaugeMetricFamily
    made: GaugeMetricFamily | CounterMetricFamily = kind(
        entry.metric, entry.help, labels=list(entry.labels) or None
    )
    if value is not None:
        made.add_metric([], value)
    return made


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
        yield family(m.SERVER_STATUS, 1.0 if status.healthy else 0.0)
        state = family(m.SERVER_STATE)
        for value in ServerState:
            state.add_metric([value.value], 1.0 if status.state is value else 0.0)
        yield state
        yield family(m.SERVER_STARTS, float(counters.starts))
        yield family(m.SERVER_STOPS, float(counters.stops))
        restarts = family(m.SERVER_RESTARTS)
        for reason, count in sorted(counters.restarts_by_reason.items()):
            restarts.add_metric([reason], float(count))
        yield restarts
        yield family(m.SERVER_UPTIME, status.uptime_seconds)


class AgentCollector(Collector):
    """The agent's own process: CPU, memory, uptime and version."""

    def __init__(self, version: str) -> None:
        self._version = version
        self._started = time.time()

    def collect(self) -> Iterator[Metric]:
        cpu_seconds, rss = self_usage()
        info = family(m.AGENT_INFO)
        info.add_metric([self._version], 1.0)
        yield info
        yield family(m.AGENT_CPU_SECONDS, cpu_seconds)
        yield family(m.AGENT_MEMORY, float(rss))
        yield family(m.AGENT_UPTIME, time.time() - self._started)


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
            m.REQUEST_DURATION.metric,
            m.REQUEST_DURATION.help,
            labelnames=m.REQUEST_DURATION.labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.store_problems = Counter(
            m.STORE_PROBLEMS.metric,
            m.STORE_PROBLEMS.help,
            labelnames=m.STORE_PROBLEMS.labels,
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

    FROM_READING = (
        m.PROCESS_CPU_SECONDS,
        m.PROCESS_MEMORY,
        m.PROCESS_THREADS,
        m.PROCESS_OPEN_FDS,
        m.PROCESS_CHILDREN,
        m.CONNECTIONS,
        m.SESSIONS,
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
        sampled = reading.value(m.DESIRED_RUNNING.metric) if reading else None
        yield family(m.DESIRED_RUNNING, 1.0 if self._wanted() and sampled == 1.0 else 0.0)
        for entry in self.FROM_READING:
            yield _from_reading(values, entry)
        size, dropped = self._store()
        yield family(m.METRICS_STORE_BYTES, float(size))
        yield family(m.SAMPLES_DROPPED, float(dropped))


def _from_reading(
    values: list[tuple[str, dict[str, str], float]], entry: MetricInfo
) -> GaugeMetricFamily | CounterMetricFamily:
    """The family of ``entry`` holding the reading's samples of it (by the entry's labels)."""
    made = family(entry)
    for metric, labels, value in values:
        if metric == entry.metric:
            made.add_metric([labels.get(label, "") for label in entry.labels], value)
    return made


class UsageCollector(Collector):
    """The models' usage (tokens, cost, messages, tool calls, errors, prompts in flight),
    from the usage ledger at scrape time."""

    FAMILIES = (
        m.USAGE_TOKENS,
        m.USAGE_COST,
        m.USAGE_MESSAGES,
        m.PROMPTS_IN_FLIGHT,
        m.TOOL_CALLS,
        m.PROVIDER_ERRORS,
    )

    def __init__(self, samples: Callable[[], list[tuple[str, dict[str, str], float]]]) -> None:
        self._samples = samples

    def collect(self) -> Iterator[Metric]:
        values = self._samples()
        for entry in self.FAMILIES:
            yield _from_reading(values, entry)
