"""Backups of OpenCode's config and data: consistent, verifiable, and restores that roll back.

A backup is one ``tar.zst`` archive plus its manifest (every file with its size
and sha256, OpenCode's version, the host and the time), written last; the live
SQLite database is copied with SQLite's online backup API. Modules:

* ``sources``: what is backed up; ``archive``: writing and hashing the archive
* ``create``, ``verify``, ``retention`` and ``prune``, ``restore`` (with
  ``extract`` and ``safety``: unsafe members are refused before anything is written)
* ``control``: the :class:`ServerControl` Protocol a live restore stops and starts
  the server with; ``schedule``: the agent's cron loop; ``metrics``; ``service``

>>> from nexus_ops.backup import RetentionPolicy
>>> RetentionPolicy().describe()
'keep within days 30'
"""

from __future__ import annotations

from nexus_ops.backup.control import CallbackControl, NoServer, ServerControl
from nexus_ops.backup.create import create_backup
from nexus_ops.backup.models import (
    BackupInfo,
    Manifest,
    PruneReport,
    RestoreReport,
    VerifyReport,
)
from nexus_ops.backup.prune import prune
from nexus_ops.backup.repository import BackupRepository
from nexus_ops.backup.restore import restore_live, restore_to_folder
from nexus_ops.backup.retention import RetentionPolicy
from nexus_ops.backup.schedule import BackupScheduler, next_run
from nexus_ops.backup.service import BackupService
from nexus_ops.backup.sources import BackupSources, OpenCodeLocations
from nexus_ops.backup.verify import verify_backup

__all__ = [
    "BackupInfo",
    "BackupRepository",
    "BackupScheduler",
    "BackupService",
    "BackupSources",
    "CallbackControl",
    "Manifest",
    "NoServer",
    "OpenCodeLocations",
    "PruneReport",
    "RestoreReport",
    "RetentionPolicy",
    "ServerControl",
    "VerifyReport",
    "create_backup",
    "next_run",
    "prune",
    "restore_live",
    "restore_to_folder",
    "verify_backup",
]
