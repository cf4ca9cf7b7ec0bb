"""Extracting parts of an archive into folders, safely.

Every member is checked first (:mod:`nexus_ops.backup.safety`); only then is
anything written, and never through a link: files are created with
``O_EXCL | O_NOFOLLOW`` and checked against the manifest's checksums as they are
written.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path

from nexus_ops.backup.archive import CHUNK, read_archive
from nexus_ops.backup.models import FileEntry
from nexus_ops.backup.safety import MANIFEST_MEMBER, MemberChecker, check_archive
from nexus_ops.errors import BackupError, UnsafeArchive


def read_members(archive: Path) -> list[tarfile.TarInfo]:
    """Every member of ``archive`` (one pass over it, nothing extracted)."""
    try:
        with read_archive(archive) as tar:
            return list(tar)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(
            f"{archive} cannot be read: {exc}", hint="verify it with `nexus-ops backup verify`"
        ) from exc


def extract_parts(
    archive: Path,
    into: Mapping[str, Path],
    expected: Mapping[str, FileEntry] | None = None,
    *,
    prechecked: bool = False,
) -> int:
    """Write the members of each part in ``into`` (part -> folder); return files written.

    A member ``data/log/x`` goes to ``into["data"] / "log/x"``. With ``expected``
    (the manifest's entries by path) every file must match its checksum. Every member
    is checked in a first pass, unless the caller has just verified the archive
    (``prechecked``); each is checked again as it is written, in case the archive
    changed since.
    """
    if not prechecked:
        check_archive(read_members(archive), str(archive))
    checker = MemberChecker()
    written = 0
    folders: list[tuple[Path, tarfile.TarInfo]] = []
    try:
        with read_archive(archive) as tar:
            for member in tar:
                problem = checker.check(member)
                if problem:
                    raise UnsafeArchive(f"{archive} changed since it was checked: {problem}")
                destination = _destination(member.name, into)
                if destination is None:
                    continue
                if member.isdir():
                    destination.mkdir(parents=True, exist_ok=True)
                    folders.append((destination, member))
                elif member.issym():
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    destination.symlink_to(member.linkname)
                else:
                    _write_file(tar, member, destination, (expected or {}).get(member.name))
                    written += 1
    except (tarfile.TarError, EOFError) as exc:
        raise BackupError(f"{archive} is damaged: {exc}") from exc
    for folder, member in reversed(folders):  # modes last: a read-only folder is still filled
        _set_folder_mode(folder, member)
    return written


def _set_folder_mode(folder: Path, member: tarfile.TarInfo) -> None:
    """Set a folder's mode and time, never through a link (the folder itself is opened
    with ``O_NOFOLLOW``; its parents were checked to be no links)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, member.mode & 0o777)
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)


def _destination(name: str, into: Mapping[str, Path]) -> Path | None:
    if name == MANIFEST_MEMBER:
        return None
    part, _, rest = name.partition("/")
    root = into.get(part)
    if root is None:
        return None
    return root / rest if rest else root


def _write_file(
    tar: tarfile.TarFile, member: tarfile.TarInfo, destination: Path, entry: FileEntry | None
) -> None:
    handle = tar.extractfile(member)
    if handle is None:
        raise BackupError(f"{member.name} cannot be read from the archive")
    destination.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(destination, flags, member.mode & 0o777)
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.utime(destination, (member.mtime, member.mtime))
    if entry is not None and digest.hexdigest() != entry.sha256:
        raise BackupError(
            f"{member.name}: checksum differs from the manifest while restoring",
            hint="the archive changed since it was written; use another backup",
        )
