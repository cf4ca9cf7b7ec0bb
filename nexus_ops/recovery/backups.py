"""The backup and restore runbooks: state of the backups, create, verify, prune, restore."""

from __future__ import annotations

import time
from pathlib import Path

from nexus_ops.backup.prune import prune
from nexus_ops.backup.repository import BackupRepository
from nexus_ops.backup.restore import restore_to_folder
from nexus_ops.backup.service import BackupService, policy_of
from nexus_ops.backup.sources import BackupSources
from nexus_ops.backup.verify import verify_backup as verify
from nexus_ops.errors import NexusOpsError
from nexus_ops.recovery.context import RecoveryContext
from nexus_ops.recovery.results import Check, Severity, Step


def _repo(ctx: RecoveryContext) -> BackupRepository:
    return BackupRepository.of(ctx.settings)


def backup_status(ctx: RecoveryContext, max_age_hours: float = 26.0) -> Check:
    """How many backups there are, and whether the newest is recent enough."""
    backups = _repo(ctx).manifests()
    regular = [m for m in backups if m.kind != "pre-restore"]
    details: dict[str, object] = {
        "folder": str(ctx.layout.backups),
        "backups": len(backups),
        "bytes": sum(m.archive.size for m in backups if m.archive),
        "schedule": ctx.settings.backup_schedule,
        "retention": policy_of(ctx.settings).describe(),
    }
    if not regular:
        return Check(name="backups", ok=False, summary="there is no backup yet", details=details)
    newest = regular[-1]
    age = (time.time() - newest.created) / 3600
    details["newest"] = newest.id
    ok = age <= max_age_hours
    summary = f"{len(regular)} backups; the newest, {newest.id}, is {age:.1f} h old" + (
        "" if ok else f" (older than {max_age_hours:g} h)"
    )
    return Check(name="backups", ok=ok, summary=summary, details=details)


def create_backup(ctx: RecoveryContext, *, dry_run: bool, include_nexus: bool = False) -> Step:
    """Back up now (with ``dry_run``: only say what would be backed up)."""
    if dry_run:
        sources = BackupSources.of(ctx.locations, ctx.layout.logs if include_nexus else None)
        files = list(sources.entries())
        size = sum(f.size for f in files)
        return Step(
            name="create",
            done=False,
            summary=f"would back up {len(files)} entries ({size >> 10} KiB) from "
            + ", ".join(str(p) for p in sources.folders.values()),
        )
    try:
        manifest = BackupService.open(ctx.settings).create(
            trigger="runbook", include_nexus=include_nexus
        )
    except NexusOpsError as exc:
        return Step(name="create", done=True, ok=False, summary=exc.message)
    size = manifest.archive.size if manifest.archive else 0
    return Step(
        name="create",
        done=True,
        summary=f"{manifest.id}: {len(manifest.files)} files, {size >> 10} KiB, "
        f"{manifest.duration_seconds:.1f} s",
        details={"id": manifest.id},
    )


def verify_backup(ctx: RecoveryContext, backup_id: str = "") -> Check:
    """Verify one backup (default: the newest): checksums and database integrity."""
    backups = _repo(ctx).manifests()
    if not backup_id:
        if not backups:
            return Check(name="verify", ok=False, summary="there is no backup to verify")
        backup_id = backups[-1].id
    try:
        report = verify(_repo(ctx), backup_id)
    except NexusOpsError as exc:
        return Check(name="verify", ok=False, summary=exc.message)
    summary = (
        f"{backup_id}: {report.checked_files} members and "
        f"{len(report.integrity)} database(s) check out"
        if report.ok
        else f"{backup_id}: {'; '.join(report.problems[:3])}"
    )
    return Check(
        name="verify", ok=report.ok, summary=summary, details={"id": backup_id, **report.integrity}
    )


def prune_backups(ctx: RecoveryContext, *, dry_run: bool) -> Step:
    """Apply the retention policy (with ``dry_run``: show what would go)."""
    try:
        report = prune(_repo(ctx), policy_of(ctx.settings), dry_run=dry_run)
    except NexusOpsError as exc:
        return Step(name="prune", done=not dry_run, ok=False, summary=exc.message)
    gone = report.to_remove if dry_run else report.removed
    verb = "would remove" if dry_run else "removed"
    return Step(
        name="prune",
        done=not dry_run,
        summary=f"{verb} {len(gone)} backup(s), keeping {len(report.kept)}",
        details={verb: ", ".join(gone) or "-", "partial files": ", ".join(report.cleaned) or "-"},
    )


def choose_backup(ctx: RecoveryContext, backup_id: str = "") -> Check:
    """The backup to restore: ``backup_id``, else the newest regular one that verifies."""
    repo = _repo(ctx)
    candidates = (
        [m for m in repo.manifests() if m.id == backup_id]
        if backup_id
        else [m for m in reversed(repo.manifests()) if m.kind != "pre-restore"]
    )
    if backup_id and not candidates:
        return Check(name="choice", ok=False, summary=f"there is no backup {backup_id!r}")
    for manifest in candidates:
        report = verify(repo, manifest.id)
        if report.ok:
            return Check(
                name="choice",
                ok=True,
                summary=f"{manifest.id} ({manifest.kind}, {manifest.sessions} sessions,"
                f" parts {', '.join(manifest.parts)}) verifies",
                details={"id": manifest.id, "sessions": manifest.sessions},
            )
        if backup_id:
            return Check(
                name="choice",
                ok=False,
                summary=f"{backup_id} does not verify: {report.problems[:2]}",
            )
    return Check(name="choice", ok=False, summary="no backup verifies (or there is none)")


def restore_backup(
    ctx: RecoveryContext,
    choice: Check,
    *,
    to_folder: str = "",
    parts: list[str] | None = None,
    dry_run: bool,
) -> Step:
    """Restore the chosen backup into ``to_folder``, or over the live folders (stopping and
    starting the server through the agent; rolled back if anything fails)."""
    if not choice.ok:
        return Step(
            name="restore", done=False, ok=False, summary=f"nothing to restore: {choice.summary}"
        )
    backup_id = str(choice.details["id"])
    where = to_folder or "the live OpenCode folders"
    if dry_run:
        return Step(name="restore", done=False, summary=f"would restore {backup_id} into {where}")
    try:
        if to_folder:
            report = restore_to_folder(_repo(ctx), backup_id, Path(to_folder), parts)
        else:
            service = BackupService.open(ctx.settings)
            report = service.restore_live(backup_id, ctx.control(), parts, trigger="runbook")
    except NexusOpsError as exc:
        return Step(name="restore", done=True, ok=False, summary=exc.message)
    summary = (
        f"restored {backup_id} into {where} in {report.seconds:.1f} s"
        if report.ok
        else f"failed and rolled back: {report.error}"
    )
    return Step(
        name="restore",
        done=True,
        ok=report.ok,
        summary=summary,
        details={
            "pre-restore backup": report.pre_restore_backup or "-",
            "steps": "\n".join(report.steps),
        },
    )


def check_restore(
    ctx: RecoveryContext, choice: Check, *, to_folder: str = "", required: bool = False
) -> Check:
    """After a restore: the restored database is sound and holds the backup's sessions
    (in ``to_folder``), or the live server serves them all."""
    from nexus_ops.backup.contents import backup_sessions
    from nexus_ops.recovery.database import confirm_sessions
    from nexus_ops.store.backups_copy import integrity_check, session_ids

    if not to_folder:
        return confirm_sessions(ctx, choice, required=required)
    severity: Severity = "error" if required else "warning"
    database = Path(to_folder) / "data" / "opencode.db"
    if not choice.ok or not database.is_file():
        return Check(
            name="restored", ok=False, severity=severity, summary=f"{database} is not there"
        )
    expected = backup_sessions(_repo(ctx), str(choice.details["id"])) or []
    result = integrity_check(database)
    found = session_ids(database) or []
    ok = result == "ok" and sorted(found) == sorted(expected)
    return Check(
        name="restored",
        ok=ok,
        severity=severity,
        summary=f"{database}: integrity {result}, {len(found)} of {len(expected)} sessions",
        details={"folder": to_folder},
    )
