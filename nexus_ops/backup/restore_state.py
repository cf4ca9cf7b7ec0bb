"""The progress record of a live restore, and how an interrupted restore is settled.

A live restore writes ``.restore-progress.json`` in the backups folder (atomically)
before each step: which backup, which folders are swapped where, the step, and the
server's desired state before the restore. A restore that ends (well or rolled
back) removes it; one that is killed (``kill -9`` of the agent) leaves it, and the
next agent settles it before it supervises anything:

* killed before every folder was swapped (extracting, stopping the server, keeping
  the pre-restore backup, swapping): **rolled back**, the previous folders put back;
* killed after the swap (checking the databases, starting the server): **finished**,
  after the integrity check if it had not run yet (rolled back if it fails);
* killed while a failed restore was being rolled back: rolled back.

Either way the staged and set-aside folders and the partial pre-restore backup are
removed. Every move is a rename and each is checked against what is on disk, so
settling is safe to repeat if it is itself interrupted.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> write_record(folder, RestoreRecord(backup_id="b1", parts=["data"], swaps=[]))
>>> load_record(folder).step
'extracting'
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from nexus_ops.backup.models import Manifest
from nexus_ops.backup.sources import SKIPPED_DIRS
from nexus_ops.models import Desired
from nexus_ops.paths import atomic_write, fsync_dir
from nexus_ops.store.backups_copy import integrity_check

RECORD_NAME = ".restore-progress.json"
Step = Literal[
    "extracting", "stopping", "keeping", "swapping", "swapped", "starting", "rolling back"
]
# Steps after which every restored folder is in place: an interruption there is finished.
SWAPPED_STEPS: frozenset[Step] = frozenset({"swapped", "starting"})
# Steps during which folders may have been moved: an interruption there is undone.
MOVING_STEPS: frozenset[Step] = frozenset({"swapping", "swapped", "starting", "rolling back"})


class Swap(BaseModel):
    """One live folder being replaced: where it is, the new one, the old one set aside."""

    live: Path
    staged: Path
    aside: Path
    live_existed: bool = True

    def swap(self) -> None:
        if self.live.exists():
            self.live.rename(self.aside)
        self.staged.rename(self.live)
        self.carry_caches()
        fsync_dir(self.live.parent)

    def carry_caches(self) -> None:
        """Keep the live caches (node_modules): they are not in backups."""
        for name in sorted(SKIPPED_DIRS):
            old = self.aside / name
            if old.exists() and not (self.live / name).exists():
                old.rename(self.live / name)

    def undo(self) -> None:
        """Put the previous folder back, from whatever point of :meth:`swap` was reached."""
        failed = self.live.with_name(self.live.name + ".failed-restore")
        if self.restored_is_live:
            for name in sorted(SKIPPED_DIRS):
                new = self.live / name
                if new.exists() and self.aside.is_dir() and not (self.aside / name).exists():
                    new.rename(self.aside / name)
            shutil.rmtree(failed, ignore_errors=True)
            if self.live.exists():
                self.live.rename(failed)
        if self.aside.exists() and not self.live.exists():
            self.aside.rename(self.live)
        shutil.rmtree(failed, ignore_errors=True)
        self.discard()

    @property
    def restored_is_live(self) -> bool:
        """Whether :meth:`swap` got as far as renaming the restored folder into place."""
        return not self.staged.exists() and (self.aside.exists() or not self.live_existed)

    def discard(self) -> None:
        """Remove the staged folder and what was set aside (once nothing needs them)."""
        shutil.rmtree(self.staged, ignore_errors=True)
        if self.live.exists():
            shutil.rmtree(self.aside, ignore_errors=True)


class RestoreRecord(BaseModel):
    """What a live restore is doing; written before each step."""

    backup_id: str
    parts: list[str]
    swaps: list[Swap]
    step: Step = "extracting"
    desired_before: Desired = "running"
    pre_restore_backup: str | None = None
    pid: int = os.getpid()

    @property
    def swapped(self) -> bool:
        return self.step in SWAPPED_STEPS


def record_path(folder: Path) -> Path:
    return folder / RECORD_NAME


def write_record(folder: Path, record: RestoreRecord) -> None:
    atomic_write(record_path(folder), record.model_dump_json(indent=1).encode())


def load_record(folder: Path) -> RestoreRecord | None:
    """The record of an unfinished restore; None when there is none (or it is unreadable)."""
    try:
        return RestoreRecord.model_validate_json(record_path(folder).read_bytes())
    except (OSError, ValueError, ValidationError):
        return None


def clear_record(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(folder).unlink()
        fsync_dir(folder)


class Settled(BaseModel):
    """How an interrupted restore was settled."""

    backup_id: str
    step: Step
    action: Literal["rolled back", "finished"]
    desired: Desired
    pre_restore_backup: str | None = None
    error: str | None = None

    @property
    def message(self) -> str:
        why = f" ({self.error})" if self.error else ""
        return (
            f"restore of {self.backup_id} was interrupted while {self.step}: "
            f"{self.action}{why}; the server's desired state is {self.desired} again"
        )


def settle(record: RestoreRecord, manifest: Manifest | None) -> Settled:
    """Roll back or finish the restore of ``record`` (see the module's docstring)."""
    error = _restored_databases_problem(record, manifest) if record.step == "swapped" else None
    if record.swapped and error is None:
        for swap in record.swaps:
            swap.carry_caches()
            swap.discard()
        action: Literal["rolled back", "finished"] = "finished"
    else:
        for swap in reversed(record.swaps):
            if record.step in MOVING_STEPS:
                swap.undo()
            else:
                swap.discard()
        action = "rolled back"
    return Settled(
        backup_id=record.backup_id,
        step=record.step,
        action=action,
        desired=record.desired_before,
        pre_restore_backup=record.pre_restore_backup,
        error=error,
    )


def _restored_databases_problem(record: RestoreRecord, manifest: Manifest | None) -> str | None:
    if manifest is None:
        return f"backup {record.backup_id} is gone, so its databases cannot be checked"
    folders = {part: swap.live for part, swap in zip(record.parts, record.swaps, strict=True)}
    for database in manifest.databases:
        part, _, rest = database.path.partition("/")
        if part in folders:
            result = integrity_check(folders[part] / rest)
            if result != "ok":
                return f"restored database {folders[part] / rest} fails integrity_check: {result}"
    return None
