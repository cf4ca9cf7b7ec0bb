"""Value types of backups: the manifest, and the reports of verify, prune and restore.

>>> entry = FileEntry(path="data/auth.json", size=2, sha256="ab", mode=0o600)
>>> entry.part
'data'
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from nexus_ops.errors import InvalidBackupId
from nexus_ops.models import Frozen

MANIFEST_FORMAT = 1
Part = Literal["config", "data", "nexus"]
PARTS: tuple[Part, ...] = ("config", "data", "nexus")
Kind = Literal["manual", "scheduled", "pre-restore", "pre-upgrade"]
# Kinds that retention judges apart from the regular backups (each its own group).
SAFETY_KINDS: tuple[Kind, ...] = ("pre-restore", "pre-upgrade")
EntryType = Literal["file", "dir", "symlink"]
# What `BackupRepository.new_id` writes (20260102T030405Z-1a2b) fits; so do a few
# other plain names. No '/', '.' or '\\': an id becomes a file name in backups/.
BACKUP_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_backup_id(backup_id: str) -> str:
    """``backup_id`` when it is a backup id, else InvalidBackupId naming it.

    >>> check_backup_id("20260102T030405Z-1a2b")
    '20260102T030405Z-1a2b'
    >>> check_backup_id("../../etc/passwd")
    Traceback (most recent call last):
    ...
    nexus_ops.errors.InvalidBackupId: '../../etc/passwd' is not a backup id ...
    """
    if not BACKUP_ID_PATTERN.fullmatch(backup_id):
        raise InvalidBackupId(
            f"{backup_id!r} is not a backup id (letters, digits, '-' and '_', at most 64)",
            hint="`nexus-ops backup list` shows the ids",
        )
    return backup_id


BackupId = Annotated[str, AfterValidator(check_backup_id)]


class FileEntry(Frozen):
    """One member of the archive: where it goes, and what it must hash to."""

    path: str = Field(description="Path inside the archive, e.g. data/opencode.db")
    type: EntryType = "file"
    size: int = 0
    sha256: str = ""
    mode: int = 0o644
    mtime: float = 0.0
    target: str | None = Field(None, description="Link target of a symlink")

    @property
    def part(self) -> str:
        return self.path.split("/", 1)[0]


class DatabaseEntry(Frozen):
    """An SQLite database in the archive and how it was copied."""

    path: str
    # snapshot-copy: its files copied under a read transaction, then checkpointed and
    # checked; online-backup: SQLite's backup API; raw-copy: as found (a damaged database)
    method: Literal["snapshot-copy", "online-backup", "raw-copy"]
    sessions: int | None = Field(None, description="Rows of OpenCode's session table")
    note: str = ""


class ArchiveInfo(Frozen):
    """The archive file itself."""

    name: str
    size: int
    sha256: str
    # How the tar is compressed; manifests of older versions (gzip) have no such field.
    format: Literal["tar.zst", "tar.gz"] = "tar.gz"


class Manifest(Frozen):
    """Everything a backup holds; written beside the archive, last."""

    format: int = MANIFEST_FORMAT
    id: BackupId
    kind: Kind = "manual"
    created: float = Field(description="Unix time the backup started")
    duration_seconds: float = 0.0
    host: str
    opencode_version: str = "unknown"
    nexus_ops_version: str = "unknown"
    sources: dict[str, str] = Field(default_factory=dict, description="part -> folder")
    files: list[FileEntry] = Field(default_factory=list)
    databases: list[DatabaseEntry] = Field(default_factory=list)
    archive: ArchiveInfo | None = None
    warnings: list[str] = Field(default_factory=list)

    @property
    def parts(self) -> list[str]:
        return sorted(self.sources)

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    @property
    def sessions(self) -> int | None:
        counts = [db.sessions for db in self.databases if db.sessions is not None]
        return sum(counts) if counts else None


class BackupInfo(Frozen):
    """One listed backup: its manifest's summary."""

    id: str
    kind: Kind
    created: float
    size: int = Field(description="Bytes of the archive")
    files: int
    parts: list[str]
    opencode_version: str
    host: str
    sessions: int | None = None
    duration_seconds: float = 0.0

    @classmethod
    def of(cls, manifest: Manifest) -> BackupInfo:
        return cls(
            id=manifest.id,
            kind=manifest.kind,
            created=manifest.created,
            size=manifest.archive.size if manifest.archive else 0,
            files=len(manifest.files),
            parts=manifest.parts,
            opencode_version=manifest.opencode_version,
            host=manifest.host,
            sessions=manifest.sessions,
            duration_seconds=manifest.duration_seconds,
        )


class VerifyReport(Frozen):
    """What verifying a backup found; ``ok`` only when every check passed."""

    id: str
    ok: bool
    checked_files: int = 0
    problems: list[str] = Field(default_factory=list)
    integrity: dict[str, str] = Field(
        default_factory=dict, description="database path -> integrity_check result"
    )
    seconds: float = 0.0


class PruneDecision(Frozen):
    """Whether retention keeps a backup, and why."""

    id: str
    created: float
    keep: bool
    reasons: list[str] = Field(default_factory=list)


class PruneReport(Frozen):
    """The plan (dry run) or the outcome of pruning."""

    dry_run: bool
    decisions: list[PruneDecision] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    cleaned: list[str] = Field(default_factory=list, description="partial files removed")
    freed_bytes: int = 0

    @property
    def kept(self) -> list[str]:
        return [d.id for d in self.decisions if d.keep]

    @property
    def to_remove(self) -> list[str]:
        return [d.id for d in self.decisions if not d.keep]


class RestoreReport(Frozen):
    """What a restore did, step by step."""

    backup_id: str
    target: str = Field(description="'live' or the folder restored into")
    parts: list[str]
    ok: bool
    files: int = 0
    pre_restore_backup: str | None = None
    rolled_back: bool = False
    steps: list[str] = Field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
