"""What a backup holds: OpenCode's config and data folders, and optionally nexus-ops's own.

The folders are found the way OpenCode finds them (``$XDG_CONFIG_HOME/opencode``
and ``$XDG_DATA_HOME/opencode``, defaulting under ``$HOME``). Walking a folder
skips caches (the ``node_modules`` plugin cache), the write-ahead log and shared
memory files of the SQLite databases (the databases themselves are copied with
SQLite's online backup API), sockets, pipes and devices.

>>> locations = OpenCodeLocations.from_environ({"HOME": "/home/ann"})
>>> locations.config_dir, locations.data_dir
(PosixPath('/home/ann/.config/opencode'), PosixPath('/home/ann/.local/share/opencode'))
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nexus_ops.backup.models import Part

# Folders never backed up, by name, anywhere in a tree.
SKIPPED_DIRS = frozenset({"node_modules", ".cache", "__pycache__"})
# Suffixes of SQLite side files: the live database is copied on its own.
SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class OpenCodeLocations:
    """OpenCode's folders on this host."""

    config_dir: Path
    data_dir: Path

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> OpenCodeLocations:
        env = os.environ if environ is None else environ
        home = Path(env.get("HOME") or Path.home())
        config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
        data = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
        return cls(config_dir=config / "opencode", data_dir=data / "opencode")

    @property
    def database(self) -> Path:
        return self.data_dir / "opencode.db"

    def folder(self, part: Part) -> Path:
        if part == "config":
            return self.config_dir
        if part == "data":
            return self.data_dir
        raise ValueError(f"OpenCode has no {part!r} folder")


@dataclass(frozen=True)
class SourceFile:
    """A file, folder or link found in a source tree."""

    path: Path
    arcname: str
    kind: str  # file, dir, symlink
    size: int
    mode: int
    mtime: float
    is_database: bool = False


def is_sqlite(path: Path) -> bool:
    """True when ``path`` starts with SQLite's header (checked for likely names only)."""
    if not path.name.endswith(SQLITE_SUFFIXES):
        return False
    try:
        with path.open("rb") as handle:
            return handle.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def is_side_file(path: Path) -> bool:
    """A -wal, -shm or -journal file of a database that sits beside it."""
    for suffix in SQLITE_SIDE_SUFFIXES:
        if path.name.endswith(suffix):
            main = path.with_name(path.name[: -len(suffix)])
            return main.name.endswith(SQLITE_SUFFIXES)
    return False


def walk(root: Path, prefix: str, skip_dirs: frozenset[str] = SKIPPED_DIRS) -> Iterator[SourceFile]:
    """Every entry under ``root`` to archive, named ``prefix/relative/path``, sorted."""
    if not root.is_dir():
        return
    yield _entry(root, prefix, os.lstat(root))
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs)
        base = Path(folder)
        for name in [*dirs, *sorted(files)]:
            path = base / name
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue  # vanished while walking: a temporary file of the server
            if not (
                stat.S_ISREG(info.st_mode)
                or stat.S_ISDIR(info.st_mode)
                or stat.S_ISLNK(info.st_mode)
            ):
                continue  # sockets, pipes and devices are never archived
            if stat.S_ISREG(info.st_mode) and is_side_file(path):
                continue
            arcname = f"{prefix}/{path.relative_to(root).as_posix()}"
            yield _entry(path, arcname, info)


def _entry(path: Path, arcname: str, info: os.stat_result) -> SourceFile:
    if stat.S_ISDIR(info.st_mode):
        kind = "dir"
    elif stat.S_ISLNK(info.st_mode):
        kind = "symlink"
    else:
        kind = "file"
    return SourceFile(
        path=path,
        arcname=arcname,
        kind=kind,
        size=info.st_size if kind == "file" else 0,
        mode=stat.S_IMODE(info.st_mode),
        mtime=info.st_mtime,
        is_database=kind == "file" and is_sqlite(path),
    )


@dataclass(frozen=True)
class BackupSources:
    """The folders of one backup, by archive prefix, and generated members.

    A prefix's first component is its part: ``config``, ``data`` or ``nexus``
    (``nexus/logs`` holds nexus-ops's logs, ``nexus/settings.json`` its settings
    with secrets masked).
    """

    folders: dict[str, Path]
    extras: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        locations: OpenCodeLocations,
        nexus_logs: Path | None = None,
        nexus_settings: bytes | None = None,
    ) -> BackupSources:
        folders: dict[str, Path] = {"config": locations.config_dir, "data": locations.data_dir}
        extras: dict[str, bytes] = {}
        if nexus_logs is not None:
            folders["nexus/logs"] = nexus_logs
        if nexus_settings is not None:
            extras["nexus/settings.json"] = nexus_settings
        return cls(folders=folders, extras=extras)

    def entries(self) -> Iterator[SourceFile]:
        for prefix, folder in sorted(self.folders.items()):
            yield from walk(folder, prefix)

    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.entries())
