"""Database failure: is OpenCode's database there, sound and answering; the repair:
restore the newest backup that verifies; and the proof: its sessions are back.
"""

from __future__ import annotations

import time

from nexus_ops.backup.contents import backup_sessions
from nexus_ops.backup.repository import BackupRepository
from nexus_ops.backup.verify import verify_backup
from nexus_ops.errors import NexusOpsError
from nexus_ops.recovery.context import RecoveryContext
from nexus_ops.recovery.results import Check, Severity, Step
from nexus_ops.store.backups_copy import integrity_check, session_ids

HOLDS = "data/opencode.db"


def check_database(ctx: RecoveryContext) -> Check:
    """The database file exists, passes ``PRAGMA integrity_check`` and the server reads it."""
    path = ctx.locations.database
    details: dict[str, object] = {"path": str(path)}
    if not path.is_file():
        return Check(name="database", ok=False, summary=f"{path} is missing", details=details)
    result = integrity_check(path)
    details["integrity_check"] = result
    if result != "ok":
        return Check(
            name="database", ok=False, summary=f"integrity_check: {result}", details=details
        )
    ids = session_ids(path)
    details["sessions in the file"] = "no session table" if ids is None else len(ids)
    api = _api_sessions(ctx)
    details["GET /session"] = api if isinstance(api, str) else f"{len(api)} sessions"
    return Check(
        name="database",
        ok=True,
        details=details,
        summary=f"integrity ok, {len(ids or [])} sessions"
        + ("" if isinstance(api, list) else f" (the server: {api})"),
    )


def _api_sessions(ctx: RecoveryContext) -> list[str] | str:
    """Session ids through OpenCode's own ``GET /session``, or why not."""
    try:
        client = ctx.opencode(timeout=5.0)
        try:
            return sorted(str(s["id"]) for s in client.sessions())
        finally:
            client.close()
    except NexusOpsError as exc:
        return exc.message


def newest_good_backup(ctx: RecoveryContext) -> Check:
    """The newest regular backup that verifies (checksums and integrity)."""
    repo = BackupRepository.of(ctx.settings)
    tried: list[str] = []
    for manifest in reversed(repo.manifests()):
        if manifest.kind == "pre-restore" or HOLDS not in {d.path for d in manifest.databases}:
            continue
        report = verify_backup(repo, manifest.id)
        if report.ok:
            age = (time.time() - manifest.created) / 3600
            return Check(
                name="backup",
                ok=True,
                severity="warning",
                summary=f"{manifest.id} verifies ({manifest.sessions} sessions, {age:.1f} h old)",
                details={
                    "id": manifest.id,
                    "sessions": manifest.sessions,
                    "skipped (do not verify)": ", ".join(tried) or "-",
                },
            )
        tried.append(manifest.id)
    return Check(
        name="backup",
        ok=False,
        severity="warning",
        summary="no backup with a database verifies" if tried else "there is no backup",
        details={"folder": str(repo.folder), "do not verify": ", ".join(tried) or "-"},
    )


def restore_database(ctx: RecoveryContext, backup: Check, *, needed: bool, dry_run: bool) -> Step:
    """Restore the data folder from ``backup`` (the check of :func:`newest_good_backup`)."""
    if not needed:
        return Step(name="restore", done=False, summary="nothing to do: the database is sound")
    if not backup.ok:
        return Step(
            name="restore", done=False, ok=False, summary=f"cannot restore: {backup.summary}"
        )
    backup_id = str(backup.details["id"])
    if dry_run:
        return Step(
            name="restore",
            done=False,
            summary=f"would restore {backup_id} over {ctx.locations.data_dir}",
        )
    from nexus_ops.backup.service import BackupService

    expected = backup_sessions(BackupRepository.of(ctx.settings), backup_id) or []
    service = BackupService.open(ctx.settings)
    try:
        report = service.restore_live(
            backup_id,
            ctx.control(),
            parts=["data"],
            trigger="runbook",
            confirm=lambda: _require_sessions(ctx, expected),
        )
    except NexusOpsError as exc:
        return Step(name="restore", done=True, ok=False, summary=exc.message)
    summary = (
        f"restored {backup_id} in {report.seconds:.1f} s; the replaced data is in "
        f"{report.pre_restore_backup}"
        if report.ok
        else f"failed and rolled back: {report.error}"
    )
    return Step(
        name="restore",
        done=True,
        ok=report.ok,
        summary=summary,
        details={"steps": "\n".join(report.steps)},
    )


def _require_sessions(ctx: RecoveryContext, expected: list[str]) -> None:
    deadline = time.monotonic() + 15
    while True:
        api = _api_sessions(ctx)
        missing = sorted(set(expected) - set(api)) if isinstance(api, list) else expected
        if not missing:
            return
        if time.monotonic() > deadline:
            raise NexusOpsError(
                f"{len(missing)} session(s) of the backup are not served: "
                + (api if isinstance(api, str) else ", ".join(missing[:5]))
            )
        time.sleep(0.5)


def confirm_sessions(ctx: RecoveryContext, backup: Check, *, required: bool = False) -> Check:
    """Every session of ``backup`` is served again by ``GET /session``.

    ``required`` after a restore; otherwise only a warning (a session deleted since
    the backup is missing for a good reason).
    """
    severity: Severity = "error" if required else "warning"
    if not backup.ok:
        return Check(
            name="sessions",
            ok=False,
            severity=severity,
            summary="no verified backup to compare with",
        )
    backup_id = str(backup.details["id"])
    expected = backup_sessions(BackupRepository.of(ctx.settings), backup_id) or []
    api = _api_sessions(ctx)
    if isinstance(api, str):
        return Check(
            name="sessions",
            ok=False,
            severity=severity,
            summary=f"the server does not list sessions: {api}",
        )
    missing = sorted(set(expected) - set(api))
    summary = (
        f"all {len(expected)} sessions of {backup_id} are served ({len(api)} in all)"
        if not missing
        else f"{len(missing)} of {len(expected)} sessions of {backup_id} are missing"
    )
    return Check(
        name="sessions",
        ok=not missing,
        severity=severity,
        summary=summary,
        details={"missing": ", ".join(missing[:20]) or "-", "served": len(api)},
    )
