"""History of backup operations (create, verify, prune, restore) in the embedded database.

The backups themselves are files in ``NEXUS_HOME/backups``; this table says when
each operation ran, how long it took and how it ended, so that the last success
outlives the agent (it is exported as a metric).

>>> from pathlib import Path
>>> runs = BackupRuns(Database(Path(":memory:")))
>>> _ = runs.record("create", trigger="cli", started=10.0, finished=12.5, ok=True, size=100)
>>> runs.last_success("create").duration
2.5
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import Field

from nexus_ops.models import Frozen
from nexus_ops.store.db import Database

SCHEMA = [
    """CREATE TABLE backup_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started REAL NOT NULL,
        finished REAL NOT NULL,
        operation TEXT NOT NULL,
        trigger TEXT NOT NULL,
        backup_id TEXT,
        ok INTEGER NOT NULL,
        size INTEGER,
        error TEXT,
        details TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX backup_runs_op_time ON backup_runs (operation, started)",
]


class BackupRun(Frozen):
    """One backup operation."""

    id: int
    started: float
    finished: float
    operation: str = Field(description="create, verify, prune or restore")
    trigger: str = Field(description="schedule, cli, api or runbook")
    backup_id: str | None = None
    ok: bool
    size: int | None = None
    error: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def duration(self) -> float:
        return round(self.finished - self.started, 3)


_COLUMNS = "id, started, finished, operation, trigger, backup_id, ok, size, error, details"


class BackupRuns:
    """Append and query backup operations."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("backup_runs", SCHEMA)

    def record(
        self,
        operation: str,
        *,
        trigger: str,
        started: float,
        finished: float | None = None,
        ok: bool,
        backup_id: str | None = None,
        size: int | None = None,
        error: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> BackupRun:
        finished = time.time() if finished is None else finished
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO backup_runs (started, finished, operation, trigger, backup_id, ok, "
                "size, error, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    started,
                    finished,
                    operation,
                    trigger,
                    backup_id,
                    int(ok),
                    size,
                    error,
                    json.dumps(details or {}, sort_keys=True),
                ),
            )
        return BackupRun(
            id=cursor.lastrowid or 0,
            started=started,
            finished=finished,
            operation=operation,
            trigger=trigger,
            backup_id=backup_id,
            ok=ok,
            size=size,
            error=error,
            details=details or {},
        )

    def recent(self, limit: int = 50, operation: str | None = None) -> list[BackupRun]:
        """The newest operations first."""
        where, params = ("WHERE operation = ?", [operation]) if operation else ("", [])
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM backup_runs {where} ORDER BY id DESC LIMIT ?",  # noqa: S608
            [*params, limit],
        )
        return [_run(row) for row in rows]

    def last_success(self, operation: str = "create") -> BackupRun | None:
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM backup_runs WHERE operation = ? AND ok = 1 "  # noqa: S608
            "ORDER BY finished DESC LIMIT 1",
            (operation,),
        )
        return _run(rows[0]) if rows else None

    def counts(self) -> dict[tuple[str, bool], int]:
        """(operation, ok) -> number of runs."""
        rows = self.db.query("SELECT operation, ok, COUNT(*) FROM backup_runs GROUP BY 1, 2")
        return {(str(op), bool(ok)): int(n) for op, ok, n in rows}


def _run(row: tuple[Any, ...]) -> BackupRun:
    run_id, started, finished, operation, trigger, backup_id, ok, size, error, details = row
    return BackupRun(
        id=run_id,
        started=started,
        finished=finished,
        operation=operation,
        trigger=trigger,
        backup_id=backup_id,
        ok=bool(ok),
        size=size,
        error=error,
        details=json.loads(details),
    )
