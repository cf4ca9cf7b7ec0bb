"""The installed OpenCode versions: when each was installed and last used, which is active.

The folders themselves are under ``NEXUS_HOME/opencode/<version>``; this table is
what outlives them: the active version (the one the supervisor starts) and the one
active before it (never pruned, so that there is always one to go back to).

>>> from pathlib import Path
>>> store = VersionStore(Database(Path(":memory:")), clock=lambda: 100.0)
>>> store.record_installed("1.18.33")
>>> store.activate("1.18.33")
>>> store.active(), store.previous()
('1.18.33', None)
"""

from __future__ import annotations

import time
from collections.abc import Callable

from nexus_ops.models import Frozen
from nexus_ops.store.db import Database

SCHEMA = [
    """CREATE TABLE opencode_versions (
        version TEXT PRIMARY KEY,
        installed REAL NOT NULL,
        last_used REAL
    )""",
    """CREATE TABLE opencode_active (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version TEXT NOT NULL,
        previous TEXT,
        since REAL NOT NULL
    )""",
]


class VersionRecord(Frozen):
    """What the database knows of one installed version."""

    version: str
    installed: float
    last_used: float | None = None


class VersionStore:
    """Installed versions and the active one, in the agent's database."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock
        db.migrate("opencode_versions", SCHEMA)

    def record_installed(self, version: str, when: float | None = None) -> None:
        """Note ``version`` as installed now (or at ``when``); a reinstall keeps its last use."""
        self.db.execute(
            "INSERT INTO opencode_versions (version, installed) VALUES (?, ?) "
            "ON CONFLICT (version) DO UPDATE SET installed = excluded.installed",
            (version, self._clock() if when is None else when),
        )

    def forget(self, version: str) -> None:
        self.db.execute("DELETE FROM opencode_versions WHERE version = ?", (version,))

    def records(self) -> dict[str, VersionRecord]:
        rows = self.db.query("SELECT version, installed, last_used FROM opencode_versions")
        return {
            row[0]: VersionRecord(version=row[0], installed=row[1], last_used=row[2])
            for row in rows
        }

    def mark_used(self, version: str) -> None:
        """Note that the server was started with ``version`` just now."""
        now = self._clock()
        self.db.execute(
            "INSERT INTO opencode_versions (version, installed, last_used) VALUES (?, ?, ?) "
            "ON CONFLICT (version) DO UPDATE SET last_used = excluded.last_used",
            (version, now, now),
        )

    def active(self) -> str | None:
        rows = self.db.query("SELECT version FROM opencode_active WHERE id = 1")
        return str(rows[0][0]) if rows else None

    def previous(self) -> str | None:
        rows = self.db.query("SELECT previous FROM opencode_active WHERE id = 1")
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def activate(self, version: str) -> None:
        """Make ``version`` active; the one active until now becomes the previous one."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT version, previous FROM opencode_active").fetchone()
            previous = row[1] if row is not None and row[0] == version else None
            if row is not None and row[0] != version:
                previous = row[0]
            conn.execute(
                "INSERT OR REPLACE INTO opencode_active (id, version, previous, since) "
                "VALUES (1, ?, ?, ?)",
                (version, previous, self._clock()),
            )
