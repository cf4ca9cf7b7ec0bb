"""The agent's metrics, assembled: sample store, sampler, queries and exposition.

>>> # metrics = MetricsService(settings, supervisor)
>>> # exposition.registry.register(metrics.collector()); await metrics.run()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import cached_property
from typing import TYPE_CHECKING, Any

from nexus_ops.config import Settings
from nexus_ops.metrics.exposition import SamplerCollector, UsageCollector
from nexus_ops.metrics.sampler import Sampler, ServerView
from nexus_ops.metrics.storefile import open_store
from nexus_ops.metrics.usage import TOKEN_KINDS, UsageLedger
from nexus_ops.metrics.usage_follow import UsageTracker
from nexus_ops.opencode import AsyncOpenCodeClient, Credentials
from nexus_ops.paths import Layout, read_or_create_secret

if TYPE_CHECKING:
    from nexus_ops.metrics.backends import MetricsBackend

USAGE_TIMEOUT = 10.0  # seconds a list of sessions or of a session's messages may take


class MetricsService:
    """Owns ``metrics.db``, samples the server into it, answers queries on it or on
    Prometheus (``NEXUS_METRICS_BACKEND``)."""

    def __init__(
        self, settings: Settings, server: ServerView, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.store = open_store(settings, owner=True)
        # Its own client, keeping its connection: the supervisor's probes open a fresh
        # one each time (to test accept()), which costs more than asking does.
        password = read_or_create_secret(Layout(settings.home).server_password_file)
        self.client = AsyncOpenCodeClient(
            settings.opencode_base_url,
            Credentials(settings.opencode_username, password),
            timeout=settings.probe_timeout,
            keepalive=1,
        )
        # The usage's own client: its event stream holds a connection, and a list of
        # sessions or messages may take longer than a probe.
        self.usage_client = AsyncOpenCodeClient(
            settings.opencode_base_url,
            Credentials(settings.opencode_username, password),
            timeout=USAGE_TIMEOUT,
            keepalive=1,
        )
        # The supervisor asks GET /session/status at every probe: its answer of the
        # last probe (or the one before, if that one is late) serves here too.
        shared = settings.probe_interval + settings.probe_timeout
        self.usage = UsageTracker(self.usage_client, server, UsageLedger(), status_max_age=shared)
        self.sampler = Sampler(
            self.store,
            server,
            port=settings.opencode_port,
            interval=settings.metrics_interval,
            flush_interval=settings.metrics_flush_interval,
            clock=clock,
            client=self.client,
            sources=[self.usage.samples],
            status_max_age=shared,
        )
        self._clock = clock

    @cached_property
    def backend(self) -> MetricsBackend:
        """The query side (downsampling): metrics.db or the Prometheus server
        of ``NEXUS_METRICS_BACKEND``, loaded at the first query, so that an agent
        nobody asks for history keeps its memory small."""
        from nexus_ops.metrics.backends import backend_from_settings

        return backend_from_settings(self.settings, store=self.store, clock=self._clock)

    async def run(self) -> None:
        """Sample until cancelled (then write what is pending)."""
        usage = asyncio.create_task(self.usage.run())
        try:
            await self.sampler.run()
        finally:
            usage.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await usage
            await self.usage_client.aclose()
            await self.client.aclose()

    def close(self) -> None:
        if "backend" in self.__dict__:  # only once a query has loaded it
            self.backend.close()
        self.store.close()

    def collector(self) -> SamplerCollector:
        """The /metrics collector of the sampler's latest reading and the store's size."""
        return SamplerCollector(
            lambda: self.sampler.latest,
            lambda: (self.store.size_bytes(), self.store.dropped),
            lambda: self.sampler.server.desired == "running",
        )

    def usage_collector(self) -> UsageCollector:
        """The /metrics collector of the models' usage."""
        return UsageCollector(self.usage.samples)

    def usage_summary(self, sessions: int = 10) -> dict[str, Any]:
        """Totals per model, tokens per day and model, the busiest sessions."""
        ledger = self.usage.ledger
        models = []
        for provider, model in ledger.models():
            row: dict[str, Any] = {"provider": provider, "model": model}
            for name in ("cost", "messages", "errors"):
                row[name] = ledger.totals.get((name, provider, model), 0.0)
            row["tokens"] = {
                kind: ledger.totals.get(("tokens", provider, model, kind), 0.0)
                for kind in TOKEN_KINDS
            }
            models.append(row)
        tools = [
            {"tool": k[1], "outcome": k[2], "calls": v}
            for k, v in sorted(ledger.totals.items())
            if k[0] == "tools"
        ]
        return {
            "connected": self.usage.connected,
            "synced": self.usage.synced,
            "connections": self.usage.connections,
            "in_flight": len(ledger.open),
            "models": models,
            "tools": tools,
            "days": ledger.by_day(),
            "sessions": ledger.busiest(sessions),
        }

    def query(
        self,
        metric: str,
        labels: str | None = None,
        start: str | float = "1h",
        end: str | float = "now",
        max_points: int = 2000,
        resolution: str = "auto",
        method: str = "minmax",
        agg: str = "mean",
        since: float | None = None,
    ) -> dict[str, Any]:
        """A query from the API's parameters; the answer as JSON-ready series.

        ``since`` (epoch seconds): only what is new after it, at the resolution the
        whole range is read at (raw points after ``since``; rollup buckets from the
        one holding ``since`` on, as that one may have grown), for a view that
        refreshes by appending."""
        from nexus_ops.metrics.backends import MetricQuery, newer_than
        from nexus_ops.metrics.series import parse_labels, parse_time, points_to_payload

        now = self._clock()
        query = MetricQuery(
            metric=metric,
            labels=parse_labels(labels),
            start=parse_time(start, now, "start"),
            end=parse_time(end, now, "end"),
            max_points=max_points,
            resolution=resolution,  # type: ignore[arg-type]  # checked by MetricQuery
            method=method,
            agg=agg,  # type: ignore[arg-type]
        )
        resolution = self.backend.resolution(query)
        read = query
        if since is not None:
            read = newer_than(query, parse_time(since, now, "since"), resolution)
        payload = points_to_payload(self.backend.read_series(read))
        payload.update(
            metric=metric,
            start=query.start,
            end=min(query.end, now),
            resolution=resolution,
            backend=self.backend.name,
        )
        return payload

    def store_info(self) -> dict[str, Any]:
        """Size and content of metrics.db, and the retention of each tier."""
        stats = self.store.stats()
        info = asdict(stats)
        info["bytes_per_raw_sample"] = round(stats.bytes_per_raw_sample, 3)
        info["retention_seconds"] = {t.name: t.retention for t in self.store.tiers}
        info["interval"] = self.sampler.interval
        return info

    def names(self) -> list[str]:
        """Names of the metrics the backend holds (metrics.db's without loading pandas)."""
        if self.settings.metrics_backend == "sqlite":
            return self.store.metrics()
        return self.backend.metrics()
