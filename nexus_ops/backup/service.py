"""One object for every backup operation, configured from the settings.

The CLI, the agent (its scheduled job and API) and the recovery functions of the
runbooks all go through :class:`BackupService`, so that each operation is recorded
the same way: a row in the backup history and an event in the journal.

>>> # service = BackupService.open(load_settings()); service.create()
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from nexus_ops.backup.control import ServerControl
from nexus_ops.backup.create import create_backup
from nexus_ops.backup.metrics import BackupCollector
from nexus_ops.backup.models import (
    SAFETY_KINDS,
    BackupInfo,
    Kind,
    Manifest,
    PruneReport,
    RestoreReport,
    VerifyReport,
)
from nexus_ops.backup.prune import prune
from nexus_ops.backup.repository import BackupRepository
from nexus_ops.backup.restore import restore_live, restore_to_folder
from nexus_ops.backup.restore_state import Settled, clear_record, load_record, settle
from nexus_ops.backup.retention import RetentionPolicy
from nexus_ops.backup.schedule import BackupScheduler
from nexus_ops.backup.sources import BackupSources, OpenCodeLocations
from nexus_ops.backup.verify import verify_backup
from nexus_ops.config import Settings, settings_table
from nexus_ops.errors import BackupError, NexusOpsError
from nexus_ops.opencode import Credentials, OpenCodeClient, binary_version
from nexus_ops.paths import Layout
from nexus_ops.store import Database, Journal
from nexus_ops.store.backups import BackupRun, BackupRuns
from nexus_ops.supervisor import store_desired, stored_desired
from nexus_ops.versions import selected_binary

T = TypeVar("T")

# Journal event kinds of backup operations.
BACKUP_OK, BACKUP_FAILED = "backup", "backup_failed"
RESTORE_OK, RESTORE_FAILED = "restore", "restore_failed"
RESTORE_SETTLED = "restore_interrupted"
PRUNE = "prune"


def policy_of(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(
        keep_last=settings.backup_keep_last,
        keep_daily=settings.backup_keep_daily,
        keep_weekly=settings.backup_keep_weekly,
        keep_monthly=settings.backup_keep_monthly,
        keep_within_days=settings.backup_keep_within_days,
    )


class BackupService:
    """Create, list, verify, prune and restore the backups of this host."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        journal: Journal | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.layout = Layout(settings.home)
        self.repo = BackupRepository.of(settings)
        self.locations = OpenCodeLocations.from_environ(environ)
        self.journal = journal
        self.runs = BackupRuns(database)
        self.scheduler: BackupScheduler | None = None

    @classmethod
    def open(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> BackupService:
        """A service on this host's ``nexus.db`` (for the CLI and the runbooks)."""
        layout = Layout(settings.home).ensure()
        database = Database(layout.database)
        return cls(settings, database, Journal(database), environ)

    @property
    def policy(self) -> RetentionPolicy:
        return policy_of(self.settings)

    def sources(self, include_nexus: bool | None = None) -> BackupSources:
        include = self.settings.backup_include_nexus if include_nexus is None else include_nexus
        if not include:
            return BackupSources.of(self.locations)
        rows = {var: value for var, value, _ in settings_table(self.settings)}
        snapshot = json.dumps({"profile": self.settings.env, "settings": rows}, indent=1)
        return BackupSources.of(self.locations, self.layout.logs, snapshot.encode())

    # ---- operations ------------------------------------------------------------------

    def create(
        self, kind: Kind = "manual", trigger: str = "cli", include_nexus: bool | None = None
    ) -> Manifest:
        """Back up now; recorded in the history and the journal, failures included."""
        sources = self.sources(include_nexus)
        version = self.opencode_version()
        manifest = self._recorded(
            "create",
            trigger,
            lambda: create_backup(self.repo, sources, kind=kind, opencode_version=version),
        )
        self._journal(
            BACKUP_OK,
            f"backup {manifest.id}: {len(manifest.files)} files, "
            f"{manifest.archive.size if manifest.archive else 0} bytes",
            {"id": manifest.id, "kind": kind, "trigger": trigger},
        )
        return manifest

    def backups(self) -> list[BackupInfo]:
        """Complete backups, newest first."""
        return [BackupInfo.of(m) for m in reversed(self.repo.manifests())]

    def get(self, backup_id: str) -> Manifest:
        return self.repo.get(backup_id)

    def verify(self, backup_id: str, trigger: str = "cli") -> VerifyReport:
        report = verify_backup(self.repo, backup_id)
        self.runs.record(
            "verify",
            trigger=trigger,
            started=time.time() - report.seconds,
            ok=report.ok,
            backup_id=backup_id,
            error="; ".join(report.problems[:5]) or None,
        )
        return report

    def newest_good(self, trigger: str = "runbook") -> tuple[Manifest, VerifyReport] | None:
        """The newest regular backup that verifies (pre-restore and pre-upgrade backups
        are skipped)."""
        for manifest in reversed(self.repo.manifests()):
            if manifest.kind in SAFETY_KINDS:
                continue
            report = self.verify(manifest.id, trigger)
            if report.ok:
                return manifest, report
        return None

    def prune(
        self, dry_run: bool = True, trigger: str = "cli", policy: RetentionPolicy | None = None
    ) -> PruneReport:
        report = prune(self.repo, policy or self.policy, dry_run=dry_run)
        if not dry_run:
            self.runs.record(
                "prune",
                trigger=trigger,
                started=time.time(),
                ok=True,
                details={"removed": report.removed, "freed": report.freed_bytes},
            )
            if report.removed:
                self._journal(
                    PRUNE, f"pruned {len(report.removed)} backup(s)", {"removed": report.removed}
                )
        return report

    def restore_to_folder(
        self,
        backup_id: str,
        target: Path,
        parts: Sequence[str] | None = None,
        trigger: str = "cli",
    ) -> RestoreReport:
        return self._recorded(
            "restore",
            trigger,
            lambda: restore_to_folder(self.repo, backup_id, target, parts),
            backup_id=backup_id,
        )

    def restore_live(
        self,
        backup_id: str,
        control: ServerControl,
        parts: Sequence[str] | None = None,
        *,
        confirm: Callable[[], None] | None = None,
        trigger: str = "cli",
        health_timeout: float | None = None,
    ) -> RestoreReport:
        """Restore over the live folders; a failed restore is rolled back (see the report)."""
        self.settle_interrupted_restore()
        started = time.time()
        version = self.opencode_version()
        desired = stored_desired(self.journal) if self.journal is not None else "running"
        report = restore_live(
            self.repo,
            backup_id,
            self.locations,
            control,
            parts,
            health_timeout=health_timeout or self.settings.start_timeout * 2,
            confirm=confirm,
            opencode_version=version,
            desired_before=desired,
        )
        self.runs.record(
            "restore",
            trigger=trigger,
            started=started,
            ok=report.ok,
            backup_id=backup_id,
            error=report.error,
            details={"pre_restore": report.pre_restore_backup, "rolled_back": report.rolled_back},
        )
        kind = RESTORE_OK if report.ok else RESTORE_FAILED
        what = "restored" if report.ok else f"restore failed and was rolled back ({report.error})"
        self._journal(kind, f"{what}: {backup_id}", {"id": backup_id, "trigger": trigger})
        return report

    def settle_interrupted_restore(self) -> Settled | None:
        """Roll back or finish a live restore that was killed half-way (see
        :mod:`~nexus_ops.backup.restore_state`); put the server's desired state back to
        what it was before that restore, and journal what was done. None when there was
        nothing to settle, or when the restore is still running in another process."""
        if load_record(self.repo.folder) is None:
            return None
        try:
            lock = self.repo.lock("settling an interrupted restore")
        except BackupError:  # its process is alive and holds the lock: not interrupted
            return None
        try:
            settled = self._settle_locked()
        finally:
            lock.release()
        if settled is not None:
            self._record_settled(settled)
        return settled

    def _settle_locked(self) -> Settled | None:
        record = load_record(self.repo.folder)
        if record is None:
            return None
        try:
            manifest: Manifest | None = self.repo.get(record.backup_id)
        except NexusOpsError:
            manifest = None
        settled = settle(record, manifest)
        self.repo.clean_leftovers()  # the partial pre-restore backup, if it was being made
        clear_record(self.repo.folder)
        return settled

    def _record_settled(self, settled: Settled) -> None:
        if self.journal is not None:
            store_desired(self.journal, settled.desired)
        self.runs.record(
            "restore",
            trigger="recovery",
            started=time.time(),
            ok=settled.action == "finished",
            backup_id=settled.backup_id,
            error=None if settled.action == "finished" else settled.message,
            details={"interrupted_at": settled.step, "action": settled.action},
        )
        self._journal(RESTORE_SETTLED, settled.message, settled.model_dump())

    def scheduled_run(self) -> Manifest:
        """What the agent's schedule runs: create, verify, prune."""
        manifest = self.create(kind="scheduled", trigger="schedule")
        report = self.verify(manifest.id, trigger="schedule")
        if not report.ok:
            self._journal(
                BACKUP_FAILED,
                f"backup {manifest.id} does not verify",
                {"problems": report.problems[:10]},
            )
            raise BackupError(f"backup {manifest.id} does not verify: {report.problems[:3]}")
        self.prune(dry_run=False, trigger="schedule")
        return manifest

    # ---- in the agent ----------------------------------------------------------------

    async def run_schedule(self) -> None:
        """The agent's job: :meth:`scheduled_run` at each time of NEXUS_BACKUP_SCHEDULE."""
        scheduler = BackupScheduler(
            self.settings.backup_schedule, lambda: asyncio.to_thread(self.scheduled_run)
        )
        self.scheduler = scheduler
        await scheduler.run()

    def collector(self) -> BackupCollector:
        """Backup metrics for the agent's registry."""
        return BackupCollector(self.runs, self.backups)

    # ---- helpers ---------------------------------------------------------------------

    def last_success(self) -> BackupRun | None:
        return self.runs.last_success("create")

    def opencode_version(self) -> str:
        """The running server's version, else the binary's, else 'unknown'."""
        password_file = self.layout.server_password_file
        if password_file.is_file():
            password = password_file.read_text(encoding="utf-8").strip()
            client = OpenCodeClient(
                self.settings.opencode_base_url,
                Credentials(self.settings.opencode_username, password),
            )
            try:
                return client.health().version
            except NexusOpsError:
                pass
            finally:
                client.close()
        try:
            binary = selected_binary(self.settings).binary
            return binary_version(binary)
        except NexusOpsError:
            return "unknown"

    def _recorded(
        self, operation: str, trigger: str, work: Callable[[], T], backup_id: str | None = None
    ) -> T:
        started = time.time()
        try:
            result = work()
        except NexusOpsError as exc:
            self.runs.record(
                operation,
                trigger=trigger,
                started=started,
                ok=False,
                backup_id=backup_id,
                error=exc.message,
            )
            if operation == "create":
                self._journal(BACKUP_FAILED, f"backup failed: {exc.message}", {"trigger": trigger})
            raise
        size = result.archive.size if isinstance(result, Manifest) and result.archive else None
        found_id = result.id if isinstance(result, Manifest) else backup_id
        self.runs.record(
            operation, trigger=trigger, started=started, ok=True, backup_id=found_id, size=size
        )
        return result

    def _journal(self, kind: str, message: str, details: dict[str, object]) -> None:
        if self.journal is not None:
            self.journal.record(kind, message=message, details=dict(details))
