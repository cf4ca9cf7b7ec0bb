"""Restoring a backup, to a folder or over the live OpenCode folders, never making things worse.

A live restore, in order: verify the backup (checksums, database integrity) and
check every member; extract the chosen parts beside the live folders; stop the
server; keep what is about to be replaced in a pre-restore backup; swap the
folders (renames on one filesystem); check the restored databases' integrity;
start the server and wait until it is healthy (and, optionally, until a
caller's ``confirm`` passes). If any step after the stop fails, the previous
folders are put back and the server started again; the report says so. Each step
is first written to the restore's progress record (:mod:`.restore_state`), so that
a restore killed half-way is settled by the next agent.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from nexus_ops.backup.control import ServerControl
from nexus_ops.backup.create import create_backup
from nexus_ops.backup.extract import extract_parts
from nexus_ops.backup.models import Manifest, Part, RestoreReport
from nexus_ops.backup.repository import BackupRepository
from nexus_ops.backup.restore_state import RestoreRecord, Step, Swap, clear_record, write_record
from nexus_ops.backup.sources import BackupSources, OpenCodeLocations
from nexus_ops.backup.verify import verify_backup
from nexus_ops.errors import BackupError, NexusOpsError
from nexus_ops.models import Desired
from nexus_ops.store.backups_copy import integrity_check

LIVE_PARTS: tuple[Part, ...] = ("config", "data")
Progress = Callable[[str], None]


def checked_manifest(repo: BackupRepository, backup_id: str) -> Manifest:
    """The manifest of a backup that verifies; BackupError naming the problems otherwise."""
    report = verify_backup(repo, backup_id)
    if not report.ok:
        raise BackupError(
            f"backup {backup_id} does not verify, so it is not restored:\n"
            + "\n".join(f"  - {p}" for p in report.problems[:10]),
            hint="choose another backup (`nexus-ops backup list`)",
        )
    return repo.get(backup_id)


def _choose_parts(
    manifest: Manifest, parts: Sequence[str] | None, allowed: Sequence[str]
) -> list[str]:
    chosen = list(parts) if parts else [p for p in manifest.parts if p in allowed]
    for part in chosen:
        if part not in allowed:
            raise BackupError(
                f"part {part!r} cannot be restored here", hint=f"choose among {', '.join(allowed)}"
            )
        if part not in manifest.parts:
            raise BackupError(
                f"backup {manifest.id} holds no {part!r} part",
                hint=f"it holds {', '.join(manifest.parts) or 'nothing'}",
            )
    return chosen


def restore_to_folder(
    repo: BackupRepository, backup_id: str, target: Path, parts: Sequence[str] | None = None
) -> RestoreReport:
    """Extract a verified backup into ``target/<part>`` (``target`` empty or new)."""
    started = time.perf_counter()
    manifest = checked_manifest(repo, backup_id)
    chosen = _choose_parts(manifest, parts, ("config", "data", "nexus"))
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(
            f"{target} is not an empty folder", hint="restore into a new or empty folder"
        )
    into = {part: target / part for part in chosen}
    entries = {entry.path: entry for entry in manifest.files}
    # checked_manifest has just verified every member: no second pass before writing.
    files = extract_parts(repo.archive_path(backup_id), into, entries, prechecked=True)
    return RestoreReport(
        backup_id=backup_id,
        target=str(target),
        parts=chosen,
        ok=True,
        files=files,
        steps=[f"verified {backup_id}", f"extracted {files} files"],
        seconds=round(time.perf_counter() - started, 3),
    )


class LiveRestore:
    """One restore over the live folders; :meth:`run` returns its report.

    >>> import tempfile
    >>> from nexus_ops.backup.control import NoServer
    >>> root = Path(tempfile.mkdtemp())
    >>> locations = OpenCodeLocations(root / "config", root / "data")
    >>> repo = BackupRepository(root / "backups")
    >>> LiveRestore(repo, locations, NoServer()).locations.data_dir.name
    'data'
    """

    def __init__(
        self,
        repo: BackupRepository,
        locations: OpenCodeLocations,
        control: ServerControl,
        *,
        health_timeout: float = 60.0,
        confirm: Callable[[], None] | None = None,
        opencode_version: str = "unknown",
        progress: Progress | None = None,
        desired_before: Desired = "running",
    ) -> None:
        self.repo = repo
        self.locations = locations
        self.control = control
        self.health_timeout = health_timeout
        self.confirm = confirm
        self.opencode_version = opencode_version
        self.progress = progress
        self.desired_before = desired_before
        self.steps: list[str] = []
        self.record: RestoreRecord | None = None

    def _step(self, text: str) -> None:
        self.steps.append(text)
        if self.progress:
            self.progress(text)

    def _enter(self, step: Step, **changes: object) -> None:
        """Write the progress record before ``step`` begins."""
        assert self.record is not None
        self.record = self.record.model_copy(update={"step": step, **changes})
        write_record(self.repo.folder, self.record)

    def run(self, backup_id: str, parts: Sequence[str] | None = None) -> RestoreReport:
        started = time.perf_counter()
        lock = self.repo.lock(f"backup restore {backup_id}", wait=60.0)
        try:
            manifest = checked_manifest(self.repo, backup_id)
            chosen = _choose_parts(manifest, parts, LIVE_PARTS)
            self._step(f"verified {backup_id} (parts {', '.join(chosen)})")
            swaps = self._stage(manifest, chosen)
            report = self._replace(manifest, chosen, swaps)
            clear_record(self.repo.folder)
        finally:
            lock.release()
        return report.model_copy(update={"seconds": round(time.perf_counter() - started, 3)})

    def _stage(self, manifest: Manifest, parts: list[str]) -> list[Swap]:
        swaps = []
        for part in parts:
            live = self.locations.folder(part)  # type: ignore[arg-type]
            live.parent.mkdir(parents=True, exist_ok=True)
            stem = f".{live.name}.{part}"
            swaps.append(
                Swap(
                    live=live,
                    staged=live.with_name(f"{stem}.restore-{manifest.id}"),
                    aside=live.with_name(f"{stem}.pre-restore-{manifest.id}"),
                    live_existed=live.exists(),
                )
            )
        for swap in swaps:
            shutil.rmtree(swap.staged, ignore_errors=True)
            shutil.rmtree(swap.aside, ignore_errors=True)
        self.record = RestoreRecord(
            backup_id=manifest.id,
            parts=parts,
            swaps=swaps,
            desired_before=self.desired_before,
        )
        write_record(self.repo.folder, self.record)
        entries = {entry.path: entry for entry in manifest.files}
        try:
            files = extract_parts(
                self.repo.archive_path(manifest.id),
                {p: s.staged for p, s in zip(parts, swaps, strict=True)},
                entries,
                prechecked=True,  # by checked_manifest, in run()
            )
        except BaseException:
            for swap in swaps:
                swap.discard()
            clear_record(self.repo.folder)
            raise
        self._step(f"extracted {files} files beside the live folders")
        return swaps

    def _replace(self, manifest: Manifest, parts: list[str], swaps: list[Swap]) -> RestoreReport:
        pre_restore: str | None = None
        try:
            self._enter("stopping")
            self.control.stop()
            self._step("stopped the server")
            self._enter("keeping")
            pre_restore = self._keep_current(parts)
            self._enter("swapping", pre_restore_backup=pre_restore)
            for swap in swaps:
                swap.swap()
            self._enter("swapped")
            self._step("swapped in the restored folders")
            self._check_databases(manifest, parts)
            self._enter("starting")
            self.control.start()
            self.control.wait_healthy(self.health_timeout)
            self._step("the server is healthy")
            if self.confirm is not None:
                self.confirm()
                self._step("confirmed")
        except Exception as exc:
            return self._roll_back(manifest, parts, swaps, pre_restore, exc)
        for swap in swaps:
            swap.discard()
        return RestoreReport(
            backup_id=manifest.id,
            target="live",
            parts=parts,
            ok=True,
            files=sum(1 for e in manifest.files if e.part in parts),
            pre_restore_backup=pre_restore,
            steps=list(self.steps),
        )

    def _keep_current(self, parts: list[str]) -> str | None:
        folders = {p: self.locations.folder(p) for p in parts}  # type: ignore[arg-type]
        present = {p: f for p, f in folders.items() if f.exists()}
        if not present:
            self._step("nothing to keep: the live folders do not exist")
            return None
        manifest = create_backup(
            self.repo,
            BackupSources(folders=dict(present)),
            kind="pre-restore",
            opencode_version=self.opencode_version,
            raw_fallback=True,
            lock=False,
        )
        self._step(f"kept the current state in pre-restore backup {manifest.id}")
        return manifest.id

    def _check_databases(self, manifest: Manifest, parts: list[str]) -> None:
        for database in manifest.databases:
            part, _, rest = database.path.partition("/")
            if part not in parts:
                continue
            path = self.locations.folder(part) / rest  # type: ignore[arg-type]
            result = integrity_check(path)
            if result != "ok":
                raise BackupError(f"restored database {path} fails integrity_check: {result}")
            self._step(f"integrity_check ok: {path}")

    def _roll_back(
        self,
        manifest: Manifest,
        parts: list[str],
        swaps: list[Swap],
        pre_restore: str | None,
        exc: Exception,
    ) -> RestoreReport:
        error = exc.message if isinstance(exc, NexusOpsError) else f"{type(exc).__name__}: {exc}"
        self._step(f"failed: {error}; putting the previous state back")
        self._enter("rolling back")
        with contextlib.suppress(Exception):
            self.control.stop()
        for swap in reversed(swaps):
            swap.undo()
        self._step("previous folders are back")
        try:
            self.control.start()
            self.control.wait_healthy(self.health_timeout)
            self._step("the server is running again on the previous state")
        except Exception as again:  # the previous state may have been broken already
            self._step(f"the server did not come back healthy: {again}")
        clear_record(self.repo.folder)
        return RestoreReport(
            backup_id=manifest.id,
            target="live",
            parts=parts,
            ok=False,
            pre_restore_backup=pre_restore,
            rolled_back=True,
            steps=list(self.steps),
            error=error,
        )


def restore_live(
    repo: BackupRepository,
    backup_id: str,
    locations: OpenCodeLocations,
    control: ServerControl,
    parts: Sequence[str] | None = None,
    *,
    health_timeout: float = 60.0,
    confirm: Callable[[], None] | None = None,
    opencode_version: str = "unknown",
    progress: Progress | None = None,
    desired_before: Desired = "running",
) -> RestoreReport:
    """Restore ``backup_id`` over the live folders (see :class:`LiveRestore`)."""
    restore = LiveRestore(
        repo,
        locations,
        control,
        health_timeout=health_timeout,
        confirm=confirm,
        opencode_version=opencode_version,
        progress=progress,
        desired_before=desired_before,
    )
    return restore.run(backup_id, parts)
