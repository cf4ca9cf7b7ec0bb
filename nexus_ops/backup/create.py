"""Creating a backup: one archive and its manifest, complete or not at all.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> (root / "config" / "opencode").mkdir(parents=True)
>>> _ = (root / "config" / "opencode" / "opencode.json").write_text("{}")
>>> sources = BackupSources(folders={"config": root / "config" / "opencode"})
>>> manifest = create_backup(BackupRepository(root / "backups"), sources)
>>> [entry.path for entry in manifest.files]
['config', 'config/opencode.json']
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from nexus_ops import __version__
from nexus_ops.backup.archive import ArchiveWriter
from nexus_ops.backup.models import ArchiveInfo, DatabaseEntry, FileEntry, Kind, Manifest
from nexus_ops.backup.repository import BackupRepository
from nexus_ops.backup.safety import MANIFEST_MEMBER
from nexus_ops.backup.sources import BackupSources, SourceFile
from nexus_ops.errors import BackupError
from nexus_ops.store.backups_copy import CopyOutcome, consistent_copy, session_ids

Progress = Callable[[str], None]


def create_backup(
    repo: BackupRepository,
    sources: BackupSources,
    *,
    kind: Kind = "manual",
    opencode_version: str = "unknown",
    raw_fallback: bool = False,
    lock: bool = True,
    lock_wait: float = 60.0,
    progress: Progress | None = None,
) -> Manifest:
    """Write a backup of ``sources`` into ``repo`` and return its manifest.

    ``raw_fallback`` copies a database that SQLite cannot read file by file (with
    its write-ahead log) instead of failing: right for the pre-restore backup of a
    stopped server whose database is damaged, wrong for a regular backup. With
    ``lock=False`` the caller already holds the repository's lock (a restore).
    """
    repo.folder.mkdir(parents=True, exist_ok=True)
    if not lock:
        return _create_locked(repo, sources, kind, opencode_version, raw_fallback, progress)
    held = repo.lock(f"backup create ({kind})", wait=lock_wait)
    try:
        repo.clean_leftovers()
        return _create_locked(repo, sources, kind, opencode_version, raw_fallback, progress)
    finally:
        held.release()


def _create_locked(
    repo: BackupRepository,
    sources: BackupSources,
    kind: Kind,
    opencode_version: str,
    raw_fallback: bool,
    progress: Progress | None,
) -> Manifest:
    started = time.time()
    backup_id = repo.new_id(started)
    partial = repo.partial_path(backup_id)
    scratch = repo.scratch_dir(backup_id)
    writer = _Writer(ArchiveWriter(partial), scratch, raw_fallback, progress)
    try:
        writer.add_all(list(sources.entries()))
        for arcname, data in sorted(sources.extras.items()):
            writer.files.append(writer.archive.add_bytes(arcname, data))
        manifest = Manifest(
            id=backup_id,
            kind=kind,
            created=started,
            host=socket.gethostname(),
            opencode_version=opencode_version,
            nexus_ops_version=__version__,
            sources={prefix: str(folder) for prefix, folder in sources.folders.items()},
            files=writer.files,
            databases=writer.databases,
            warnings=writer.archive.warnings,
        )
        writer.archive.add_bytes(MANIFEST_MEMBER, manifest.model_dump_json(indent=1).encode())
        writer.archive.close()
    except BaseException:
        writer.archive.abort()
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    info = ArchiveInfo(
        name=repo.archive_path(backup_id).name,
        size=writer.archive.size,
        sha256=writer.archive.sha256,
        format="tar.zst",
    )
    final = manifest.model_copy(
        update={"archive": info, "duration_seconds": round(time.time() - started, 3)}
    )
    repo.publish(partial, final)
    return final


class _Writer:
    """Adds source entries to the archive; databases as consistent copies (their files
    under a read transaction, or SQLite's online backup API)."""

    def __init__(
        self, archive: ArchiveWriter, scratch: Path, raw_fallback: bool, progress: Progress | None
    ) -> None:
        self.archive = archive
        self.scratch = scratch
        self.raw_fallback = raw_fallback
        self.progress = progress
        self.files: list[FileEntry] = []
        self.databases: list[DatabaseEntry] = []

    def add_all(self, entries: list[SourceFile]) -> None:
        """Every entry; the databases last, copied on a thread meanwhile (the kernel's
        copy and SQLite's work run outside the GIL), so the copy overlaps with the other
        files."""
        databases = [source for source in entries if source.is_database]
        with concurrent.futures.ThreadPoolExecutor(1, "backup-db-copy") as pool:
            copies = []
            for n, source in enumerate(databases):
                if self.progress:
                    self.progress(f"copying database {source.path}")
                copies.append(pool.submit(consistent_copy, source.path, self._copy_path(n, source)))
            for source in entries:
                if not source.is_database:
                    self.add(source)
            for n, (source, copy) in enumerate(zip(databases, copies, strict=True)):
                self._add_database(source, copy, self._copy_path(n, source))

    def add(self, source: SourceFile) -> None:
        if source.kind == "dir":
            self.files.append(self.archive.add_dir(source.arcname, source.mode, source.mtime))
        elif source.kind == "symlink":
            target = str(source.path.readlink())
            self.files.append(self.archive.add_symlink(source.arcname, target, source.mtime))
        else:
            self.files.append(
                self.archive.add_file(
                    source.path, source.arcname, source.size, source.mode, source.mtime
                )
            )

    def _copy_path(self, n: int, source: SourceFile) -> Path:
        return self.scratch / f"{n}-{source.path.name}"

    def _add_database(
        self, source: SourceFile, pending: concurrent.futures.Future[CopyOutcome], copy: Path
    ) -> None:
        try:
            outcome = pending.result()
        except BackupError as exc:
            if not self.raw_fallback:
                raise
            self._add_raw_database(source, str(exc.message))
            return
        ids = session_ids(copy)
        self.files.append(
            self.archive.add_file(
                copy, source.arcname, copy.stat().st_size, source.mode, source.mtime
            )
        )
        copy.unlink()
        self.databases.append(
            DatabaseEntry(
                path=source.arcname,
                method=outcome.method,
                sessions=None if ids is None else len(ids),
                note=outcome.note,
            )
        )

    def _add_raw_database(self, source: SourceFile, why: str) -> None:
        for suffix in ("", "-wal", "-journal"):  # -shm is rebuilt by SQLite
            path = source.path.with_name(source.path.name + suffix)
            if path.is_file():
                size = path.stat().st_size
                self.files.append(
                    self.archive.add_file(
                        path, source.arcname + suffix, size, source.mode, path.stat().st_mtime
                    )
                )
        self.databases.append(DatabaseEntry(path=source.arcname, method="raw-copy", note=why))
