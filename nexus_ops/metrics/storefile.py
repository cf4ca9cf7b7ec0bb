"""The agent's sample store on disk, opened with the retention its settings give.

Kept apart from the query backends, so that the agent samples and keeps history
without loading pandas until someone asks for a query.
"""

from __future__ import annotations

from nexus_ops.config import Settings
from nexus_ops.paths import Layout
from nexus_ops.store.samples import Retention, SampleStore


def retention_from_settings(settings: Settings) -> Retention:
    return Retention(
        raw=settings.metrics_raw_retention_hours * 3600.0,
        minute=settings.metrics_minute_retention_days * 86400.0,
        hour=settings.metrics_hour_retention_days * 86400.0,
    )


def open_store(settings: Settings, *, owner: bool = False) -> SampleStore:
    """The sample store of these settings (``$NEXUS_HOME/metrics.db``); its ``owner``, the
    agent, moves a damaged file aside and starts a fresh one."""
    return SampleStore(
        Layout(settings.home).metrics_database,
        retention_from_settings(settings),
        set_aside_damaged=owner,
    )
