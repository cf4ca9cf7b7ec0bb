"""Backup metrics for the agent's ``/metrics``, read from the backup history at scrape time.

Declared in :mod:`nexus_ops.metrics.catalogue`:

* ``nexus_backup_last_success_timestamp_seconds``: when the last backup succeeded
* ``nexus_backup_last_size_bytes`` and ``nexus_backup_last_duration_seconds``: of it
* ``nexus_backup_operations_total{operation,outcome}``: create, verify, prune, restore
* ``nexus_backups{kind}``: backups on disk, and ``nexus_backups_size_bytes``
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from nexus_ops.backup.models import BackupInfo
from nexus_ops.metrics import catalogue as m
from nexus_ops.metrics.exposition import family
from nexus_ops.store.backups import BackupRuns


class BackupCollector(Collector):
    """Collects from ``runs`` (the history) and ``listing`` (the backups on disk).

    >>> from pathlib import Path
    >>> from nexus_ops.store import Database
    >>> collector = BackupCollector(BackupRuns(Database(Path(":memory:"))), list)
    >>> sorted(m.name for m in collector.collect())[:2]
    ['nexus_backup_last_duration_seconds', 'nexus_backup_last_size_bytes']
    """

    def __init__(self, runs: BackupRuns, listing: Callable[[], list[BackupInfo]]) -> None:
        self._runs = runs
        self._listing = listing

    def collect(self) -> Iterator[Metric]:
        last = self._runs.last_success("create")
        yield family(m.BACKUP_LAST_SUCCESS, last.finished if last else 0.0)
        yield family(m.BACKUP_LAST_SIZE, float(last.size or 0) if last else 0.0)
        yield family(m.BACKUP_LAST_DURATION, last.duration if last else 0.0)
        operations = family(m.BACKUP_OPERATIONS)
        for (operation, ok), count in sorted(self._runs.counts().items()):
            operations.add_metric([operation, "ok" if ok else "error"], float(count))
        yield operations
        yield from self._on_disk()

    def _on_disk(self) -> Iterator[Metric]:
        backups = self._listing()
        by_kind: dict[str, int] = {"manual": 0, "scheduled": 0, "pre-restore": 0, "pre-upgrade": 0}
        for info in backups:
            by_kind[info.kind] = by_kind.get(info.kind, 0) + 1
        count = family(m.BACKUPS)
        for kind, number in sorted(by_kind.items()):
            count.add_metric([kind], float(number))
        yield count
        yield family(m.BACKUPS_SIZE, float(sum(info.size for info in backups)))
