"""Extracting parts of an archive into folders, safely.

Every member is checked first (:mod:`nexus_ops.backup.safety`); only then is
anything written, and never through a link: every folder on the way is opened
with ``O_NOFOLLOW`` from the one above it (``openat``), files are created in it with
``O_EXCL | O_NOFOLLOW`` and checked against the manifest's checksums as they are
written, and folder modes are set on the folder's own descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
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
    (the manifest's entries by path) every member must be one of them, of its size and
    checksum, and their sizes must fit in the free space of each target's filesystem.
    Every member is checked in a first pass, unless the caller has just verified the
    archive (``prechecked``); each is checked again as it is written, in case the
    archive changed since. Every folder on the way is opened with ``O_NOFOLLOW`` from
    the part's folder down, so nothing is ever written or chmodded through a link, even
    one that appeared on disk meanwhile. If anything fails (a full disk too), the
    folders it made are removed: nothing is left half-written.
    """
    if not prechecked:
        check_archive(read_members(archive), str(archive))
    if expected is not None:
        _check_space(into, expected)
    made = [top for root in into.values() if (top := _first_missing(root)) is not None]
    try:
        return _extract(archive, into, expected)
    except BaseException:
        for top in made:
            shutil.rmtree(top, ignore_errors=True)
        raise


def _extract(
    archive: Path, into: Mapping[str, Path], expected: Mapping[str, FileEntry] | None
) -> int:
    checker = MemberChecker()
    written = 0
    folders: list[tuple[Path, list[str], tarfile.TarInfo]] = []
    try:
        with read_archive(archive) as tar:
            for member in tar:
                problem = checker.check(member)
                if problem:
                    raise UnsafeArchive(f"{archive} changed since it was checked: {problem}")
                place = _place(member, into)
                if place is None:
                    continue
                entry = _expected_entry(member, expected)
                try:
                    _extract_member(tar, member, *place, entry)
                except OSError as exc:
                    raise _write_error(member, exc) from exc
                if member.isdir():
                    folders.append((*place, member))
                written += member.isreg()
    except (tarfile.TarError, EOFError) as exc:
        raise BackupError(f"{archive} is damaged: {exc}") from exc
    for root, path, member in reversed(folders):  # modes last: a read-only folder is still filled
        _set_folder_mode(root, path, member)
    return written


def _expected_entry(
    member: tarfile.TarInfo, expected: Mapping[str, FileEntry] | None
) -> FileEntry | None:
    """The manifest's entry of ``member``; no member is bigger than the manifest says."""
    if expected is None:
        return None
    entry = expected.get(member.name)
    if entry is None:
        raise UnsafeArchive(f"{member.name}: in the archive but not in the manifest")
    if member.isreg() and member.size != entry.size:
        raise UnsafeArchive(
            f"{member.name}: {member.size} bytes in the archive, the manifest says {entry.size}"
        )
    return entry


def _extract_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    root: Path,
    path: list[str],
    entry: FileEntry | None,
) -> None:
    if member.isdir():
        os.close(_open_folder(root, path, create=True))
    else:
        _write_member(tar, member, root, path, entry)


def _write_error(member: tarfile.TarInfo, exc: OSError) -> BackupError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return BackupError(
        f"restoring {member.name} failed: {exc.strerror or exc}; "
        "what this restore wrote is removed, nothing else was changed",
        hint="free space on the target's filesystem (`df`), or restore elsewhere"
        if full
        else "check the target folder (permissions, filesystem) and try again",
    )


def _check_space(into: Mapping[str, Path], expected: Mapping[str, FileEntry]) -> None:
    """BackupError when the entries of the parts in ``into`` do not fit in the free space
    of their filesystems (each file and folder counted a block more)."""
    needed: dict[int, tuple[Path, int]] = {}
    for entry in expected.values():
        root = into.get(entry.part)
        if root is None:
            continue
        anchor = _existing(root)
        device = anchor.stat().st_dev
        where, size = needed.get(device, (anchor, 0))
        needed[device] = (where, size + entry.size + _BLOCK)
    for where, size in needed.values():
        stat = os.statvfs(where)
        free = stat.f_bavail * stat.f_frsize
        if size > free:
            raise BackupError(
                f"restoring needs {size / 2**20:.1f} MiB on the filesystem of {where}, "
                f"which has {free / 2**20:.1f} MiB free; nothing was written",
                hint="free space there (`df`), or restore into a folder elsewhere",
            )


_BLOCK = 4096


def _existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _first_missing(path: Path) -> Path | None:
    """The highest folder that making ``path`` creates (None: it exists already)."""
    top = None
    while not os.path.lexists(path) and path != path.parent:
        top, path = path, path.parent
    return top


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_folder(root: Path, path: list[str], *, create: bool) -> int:
    """A descriptor of ``root/path``, each component opened with ``O_NOFOLLOW`` from the
    one before (and made when missing, with ``create``); UnsafeArchive on a link."""
    root.mkdir(parents=True, exist_ok=True)  # the caller's own folder
    fd = os.open(root, _FOLDER)
    for depth, name in enumerate(path):
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=fd)
        fd = _open_child(fd, name, root.joinpath(*path[: depth + 1]))
    return fd


def _open_child(fd: int, name: str, shown: Path) -> int:
    """Open the folder ``name`` in the folder ``fd`` (which is closed)."""
    try:
        return os.open(name, _FOLDER, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeArchive(
                f"{shown} is a link or not a folder on disk; nothing is written through it",
                hint="restore into a new, empty folder that nobody else writes to",
            ) from None
        raise
    finally:
        os.close(fd)


def _set_folder_mode(root: Path, path: list[str], member: tarfile.TarInfo) -> None:
    """Set a folder's mode and time through its own descriptor (never through a link)."""
    fd = _open_folder(root, path, create=False)
    try:
        os.fchmod(fd, member.mode & 0o777)
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)


def _place(member: tarfile.TarInfo, into: Mapping[str, Path]) -> tuple[Path, list[str]] | None:
    """The part's folder and the components below it where ``member`` goes (None: skipped)."""
    if member.name == MANIFEST_MEMBER:
        return None
    part, _, rest = member.name.rstrip("/").partition("/")
    root = into.get(part)
    if root is None:
        return None
    path = rest.split("/") if rest else []
    if not path and not member.isdir():
        raise UnsafeArchive(f"{member.name}: a part must be a folder")
    return root, path


def _write_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    root: Path,
    path: list[str],
    entry: FileEntry | None,
) -> None:
    parent = _open_folder(root, path[:-1], create=True)
    try:
        if member.issym():
            os.symlink(member.linkname, path[-1], dir_fd=parent)
        else:
            _write_file(tar, member, parent, path[-1], entry)
    finally:
        os.close(parent)


def _write_file(
    tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, name: str, entry: FileEntry | None
) -> None:
    handle = tar.extractfile(member)
    if handle is None:
        raise BackupError(f"{member.name} cannot be read from the archive")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, member.mode & 0o777, dir_fd=parent)
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
        os.utime(out.fileno(), (member.mtime, member.mtime))
    if entry is not None and digest.hexdigest() != entry.sha256:
        raise BackupError(
            f"{member.name}: checksum differs from the manifest while restoring",
            hint="the archive changed since it was written; use another backup",
        )
