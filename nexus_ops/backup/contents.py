"""Looking inside a backup without restoring it: the sessions its database holds.

>>> import tempfile
>>> from pathlib import Path
>>> from nexus_ops.backup.create import create_backup
>>> from nexus_ops.backup.sources import BackupSources
>>> repo = BackupRepository(Path(tempfile.mkdtemp()))
>>> backup_sessions(repo, create_backup(repo, BackupSources(folders={})).id) is None
True
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

from nexus_ops.backup.archive import read_archive
from nexus_ops.backup.repository import BackupRepository
from nexus_ops.errors import BackupError
from nexus_ops.store.backups_copy import session_ids

DATABASE_MEMBER = "data/opencode.db"


def backup_sessions(
    repo: BackupRepository, backup_id: str, member: str = DATABASE_MEMBER
) -> list[str] | None:
    """The session ids in a backup's OpenCode database; None when it holds no database."""
    manifest = repo.get(backup_id)
    if member not in {db.path for db in manifest.databases}:
        return None
    with tempfile.TemporaryDirectory(prefix="nexus-sessions-") as scratch:
        copy = Path(scratch) / "opencode.db"
        try:
            with read_archive(repo.archive_path(backup_id)) as tar:
                for info in tar:
                    if info.name == member and info.isreg():
                        source = tar.extractfile(info)
                        if source is not None:
                            with copy.open("wb") as out:
                                shutil.copyfileobj(source, out)
                        break
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"cannot read backup {backup_id}: {exc}") from exc
        return session_ids(copy) if copy.exists() else None
