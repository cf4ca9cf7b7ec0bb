"""Verifying a backup: the archive's checksum, every member's, and each database's integrity.

One pass over the archive: each member is hashed as it streams by and compared
with the manifest; each database is written to a scratch folder and checked with
``PRAGMA integrity_check``.
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
import time
from pathlib import Path

from nexus_ops.backup.archive import CHUNK, read_archive, sha256_file
from nexus_ops.backup.models import FileEntry, Manifest, VerifyReport
from nexus_ops.backup.repository import BackupRepository
from nexus_ops.backup.safety import MANIFEST_MEMBER, MemberChecker
from nexus_ops.store.backups_copy import integrity_check


def verify_backup(repo: BackupRepository, backup_id: str) -> VerifyReport:
    """Check ``backup_id`` completely; ``ok`` is True only when nothing is wrong.

    >>> import tempfile
    >>> from nexus_ops.backup.sources import BackupSources
    >>> from nexus_ops.backup.create import create_backup
    >>> repo = BackupRepository(Path(tempfile.mkdtemp()))
    >>> manifest = create_backup(repo, BackupSources(folders={}))
    >>> verify_backup(repo, manifest.id).ok
    True
    """
    started = time.perf_counter()
    manifest = repo.get(backup_id)
    problems = _check_archive_file(repo, manifest) or _check_expansion(repo, manifest)
    integrity: dict[str, str] = {}
    checked = 0
    if not problems:
        checked, more, integrity = _check_members(repo.archive_path(backup_id), manifest)
        problems += more
    problems += [
        f"{path}: integrity_check: {result}"
        for path, result in integrity.items()
        if result != "ok" and _is_consistent_copy(manifest, path)
    ]
    return VerifyReport(
        id=backup_id,
        ok=not problems,
        checked_files=checked,
        problems=problems,
        integrity=integrity,
        seconds=round(time.perf_counter() - started, 3),
    )


def _is_consistent_copy(manifest: Manifest, path: str) -> bool:
    # A raw copy (pre-restore backup of a damaged database) is kept as it was found.
    return any(db.path == path and db.method != "raw-copy" for db in manifest.databases)


def _check_archive_file(repo: BackupRepository, manifest: Manifest) -> list[str]:
    path = repo.archive_path(manifest.id)
    if manifest.archive is None:
        return ["the manifest does not describe its archive"]
    size = path.stat().st_size
    if size != manifest.archive.size:
        return [f"{path.name}: {size} bytes, the manifest says {manifest.archive.size}"]
    if sha256_file(path) != manifest.archive.sha256:
        return [f"{path.name}: checksum differs from the manifest (the archive changed)"]
    return []


SMALL_EXPANSION = 64 << 20  # never refused by the ratio: no bomb at that size


def _check_expansion(repo: BackupRepository, manifest: Manifest) -> list[str]:
    """A backup whose files add up to far more than its archive is not read further
    (a decompression bomb; or raise ``max_expansion_ratio``)."""
    size = manifest.archive.size if manifest.archive else 0
    total = manifest.total_bytes
    if total <= max(SMALL_EXPANSION, repo.max_expansion_ratio * size):
        return []
    return [
        f"its files add up to {total / 2**20:.1f} MiB, {total / max(size, 1):.0f} times its "
        f"{size / 2**20:.1f} MiB archive: more than NEXUS_BACKUP_MAX_EXPANSION_RATIO "
        f"({repo.max_expansion_ratio:g}) allows, so it is not extracted"
    ]


def _check_members(archive: Path, manifest: Manifest) -> tuple[int, list[str], dict[str, str]]:
    expected = {entry.path: entry for entry in manifest.files}
    databases = {db.path for db in manifest.databases}
    seen: set[str] = set()
    problems: list[str] = []
    integrity: dict[str, str] = {}
    checker = MemberChecker()  # one for the whole archive: links are judged with earlier ones
    with tempfile.TemporaryDirectory(prefix="nexus-verify-") as scratch:
        try:
            with read_archive(archive) as tar:
                for member in tar:
                    if problem := checker.check(member):
                        problems.append(problem)
                    if member.name == MANIFEST_MEMBER:
                        continue
                    seen.add(member.name)
                    entry = expected.get(member.name)
                    if entry is None:
                        problems.append(f"{member.name}: in the archive but not in the manifest")
                        continue
                    copy = Path(scratch) / f"{len(integrity)}.db"
                    keep = copy if member.name in databases else None
                    problems += _compare(tar, member, entry, keep)
                    if keep is not None:
                        integrity[member.name] = integrity_check(copy)
        except (tarfile.TarError, OSError, EOFError) as exc:
            problems.append(f"{archive.name}: cannot be read: {exc}")
    problems += [
        f"{name}: in the manifest but not in the archive" for name in sorted(set(expected) - seen)
    ]
    return len(seen), problems, integrity


def _compare(
    tar: tarfile.TarFile, member: tarfile.TarInfo, entry: FileEntry, keep: Path | None
) -> list[str]:
    if entry.type == "dir":
        return [] if member.isdir() else [f"{member.name}: should be a folder"]
    if entry.type == "symlink":
        ok = member.issym() and member.linkname == entry.target
        return [] if ok else [f"{member.name}: should link to {entry.target}"]
    handle = tar.extractfile(member)
    if handle is None:
        return [f"{member.name}: should be a file"]
    digest = hashlib.sha256()
    out = keep.open("wb") if keep is not None else None
    try:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
    finally:
        if out is not None:
            out.close()
    if member.size != entry.size or digest.hexdigest() != entry.sha256:
        return [f"{member.name}: size or checksum differs from the manifest"]
    return []
