"""The backups folder: names, listing, reading and deleting backups.

A backup is two files: ``<id>.tar.zst`` and ``<id>.json`` (its manifest); backups
of older versions have ``<id>.tar.gz`` instead, still read. The archive is written
as ``.<id>.tar.zst.part``, synced and renamed; the manifest is
written last, atomically. Only a backup whose manifest exists is listed, so an
interrupted backup (even by ``kill -9``) is never offered for a restore; its
partial files are removed by the next create or prune.

>>> import tempfile
>>> repo = BackupRepository(Path(tempfile.mkdtemp()))
>>> repo.manifests()
[]
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from nexus_ops.backup.models import BACKUP_ID_PATTERN, Manifest, check_backup_id
from nexus_ops.config import Settings
from nexus_ops.errors import BackupError, BackupNotFound
from nexus_ops.locks import FileLock, LockBusy
from nexus_ops.paths import Layout, atomic_write, fsync_dir

ARCHIVE_SUFFIX = ".tar.zst"
OLD_ARCHIVE_SUFFIXES = (".tar.gz",)  # written by older versions: read, verified, restored
MANIFEST_SUFFIX = ".json"
PARTIAL_SUFFIX = ".part"
SCRATCH_SUFFIX = ".scratch"


class BackupRepository:
    """Backups kept in one folder (``Layout.backups``).

    ``max_expansion_ratio`` (``NEXUS_BACKUP_MAX_EXPANSION_RATIO``, default 1000) is how many
    times its archive a backup's files may add up to before verify and restore refuse it.
    """

    def __init__(self, folder: Path, max_expansion_ratio: float = 1000.0) -> None:
        self.folder = folder
        self.max_expansion_ratio = max_expansion_ratio

    @classmethod
    def of(cls, settings: Settings) -> BackupRepository:
        """The backups folder of these settings (``$NEXUS_HOME/backups``), with their limits."""
        return cls(Layout(settings.home).backups, settings.backup_max_expansion_ratio)

    # Names.
    def new_id(self, now: float | None = None) -> str:
        stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
        return f"{stamp:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"

    # Every path of a backup is made here, from a checked id (InvalidBackupId otherwise).
    def archive_path(self, backup_id: str) -> Path:
        """The archive of ``backup_id``: the one on disk, else where a new one goes."""
        checked = check_backup_id(backup_id)
        for suffix in OLD_ARCHIVE_SUFFIXES:
            old = self.folder / f"{checked}{suffix}"
            if old.is_file():
                return old
        return self.folder / f"{checked}{ARCHIVE_SUFFIX}"

    def manifest_path(self, backup_id: str) -> Path:
        return self.folder / f"{check_backup_id(backup_id)}{MANIFEST_SUFFIX}"

    def partial_path(self, backup_id: str) -> Path:
        return self.folder / f".{check_backup_id(backup_id)}{ARCHIVE_SUFFIX}{PARTIAL_SUFFIX}"

    def scratch_dir(self, backup_id: str) -> Path:
        """A private folder for database copies while a backup is written."""
        path = self.folder / f".{check_backup_id(backup_id)}{SCRATCH_SUFFIX}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def lock(self, what: str, wait: float = 0.0) -> FileLock:
        """The lock every create, prune and restore holds; raise BackupError if busy."""
        try:
            return FileLock(self.folder / ".lock", what).acquire(wait)
        except LockBusy as exc:
            raise BackupError(exc.message, hint=exc.hint) from None

    # Reading.
    def manifests(self) -> list[Manifest]:
        """Complete backups, oldest first (a manifest whose id is not a backup id, or not
        its own file's name, is no backup: it is never listed, restored or pruned)."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.glob(f"*{MANIFEST_SUFFIX}"):
            manifest = self._read(path)
            if manifest is not None and self.archive_path(manifest.id).is_file():
                found.append(manifest)
        return sorted(found, key=lambda m: (m.created, m.id))

    def get(self, backup_id: str) -> Manifest:
        """The manifest of ``backup_id``; a clear error if there is no such backup."""
        path = self.manifest_path(backup_id)
        manifest = self._read(path) if path.is_file() else None
        if manifest is None or not self.archive_path(backup_id).is_file():
            known = [m.id for m in self.manifests()[-5:]]
            raise BackupNotFound(
                f"there is no backup {backup_id!r} in {self.folder}",
                hint="`nexus-ops backup list` shows the backups"
                + (f"; the newest are {', '.join(known)}" if known else "; there are none yet"),
            )
        return manifest

    @staticmethod
    def _read(path: Path) -> Manifest | None:
        try:
            manifest = Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, ValidationError):
            return None
        return manifest if path.name == f"{manifest.id}{MANIFEST_SUFFIX}" else None

    # Writing.
    def publish(self, partial: Path, manifest: Manifest) -> None:
        """Rename the finished archive into place, then write its manifest (last)."""
        partial.replace(self.archive_path(manifest.id))
        fsync_dir(self.folder)
        data = manifest.model_dump_json(indent=1).encode()
        atomic_write(self.manifest_path(manifest.id), data)

    def delete(self, backup_id: str) -> int:
        """Remove a backup (manifest first, so it is never listed half-deleted); bytes freed."""
        freed = 0
        archives = [
            self.folder / f"{backup_id}{s}" for s in (ARCHIVE_SUFFIX, *OLD_ARCHIVE_SUFFIXES)
        ]
        for path in (self.manifest_path(backup_id), *archives):
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
        return freed

    def leftovers(self) -> list[Path]:
        """Partial archives, scratch folders and archives without a manifest.

        Only meaningful while holding :meth:`lock`: then nobody is writing them.
        """
        if not self.folder.is_dir():
            return []
        found = [*self.folder.glob(f".*{PARTIAL_SUFFIX}"), *self.folder.glob(f".*{SCRATCH_SUFFIX}")]
        for suffix in (ARCHIVE_SUFFIX, *OLD_ARCHIVE_SUFFIXES):
            for archive in self.folder.glob(f"*{suffix}"):
                backup_id = archive.name[: -len(suffix)]
                if not BACKUP_ID_PATTERN.fullmatch(backup_id):
                    continue  # not a name nexus-ops writes: not ours to remove
                if not self.manifest_path(backup_id).is_file():
                    found.append(archive)
        return sorted(found)

    def clean_leftovers(self) -> list[str]:
        """Remove :meth:`leftovers`; return their names."""
        removed = []
        for path in self.leftovers():
            if path.is_dir():
                for child in path.iterdir():
                    child.unlink()
                path.rmdir()
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path.name)
        return removed
