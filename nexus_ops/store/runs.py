"""The index of runbook runs: who ran what, when, with which parameters, and how it ended.

The executed notebooks themselves are files under ``NEXUS_HOME/runs``; a row
points at its notebook and copies the verdict of its last cell. A row left
``running`` by a process that died is reported as ``interrupted``.

>>> from pathlib import Path
>>> index = RunIndex(Database(Path(":memory:")))
>>> run = index.create("r1", "backup", who="ann", parameters={"dry_run": True},
...                    notebook="/tmp/r1.ipynb", cells_total=5)
>>> index.get("r1").status
'running'
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Literal

from pydantic import Field

from nexus_ops.errors import RunNotFound
from nexus_ops.models import Frozen
from nexus_ops.process import pid_alive
from nexus_ops.store.db import Database

RunStatus = Literal["running", "succeeded", "failed", "interrupted"]

SCHEMA = [
    """CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        runbook TEXT NOT NULL,
        who TEXT NOT NULL,
        started REAL NOT NULL,
        finished REAL,
        parameters TEXT NOT NULL,
        status TEXT NOT NULL,
        notebook TEXT NOT NULL,
        pid INTEGER NOT NULL,
        cells_done INTEGER NOT NULL DEFAULT 0,
        cells_total INTEGER NOT NULL DEFAULT 0,
        healthy INTEGER,
        verdict TEXT,
        error TEXT,
        failed_cell INTEGER
    )""",
    "CREATE INDEX runs_started ON runs (started)",
]
_COLUMNS = (
    "id, runbook, who, started, finished, parameters, status, notebook, pid, cells_done, "
    "cells_total, healthy, verdict, error, failed_cell"
)


class RunRecord(Frozen):
    """One run of a runbook."""

    id: str
    runbook: str
    who: str
    started: float
    finished: float | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    status: RunStatus
    notebook: str = Field(description="The executed notebook (the audit record)")
    pid: int = Field(description="Process that executes it")
    cells_done: int = 0
    cells_total: int = 0
    healthy: bool | None = Field(None, description="The verdict's answer, once recorded")
    verdict: dict[str, Any] | None = None
    error: str | None = None
    failed_cell: int | None = Field(None, description="Index of the cell that failed")

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else round(self.finished - self.started, 3)


class RunIndex:
    """Rows of the ``runs`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("runs", SCHEMA)

    def create(
        self,
        run_id: str,
        runbook: str,
        *,
        who: str,
        parameters: dict[str, Any],
        notebook: str,
        cells_total: int,
    ) -> RunRecord:
        self.db.execute(
            f"INSERT INTO runs ({_COLUMNS}) VALUES (?, ?, ?, ?, NULL, ?, 'running', ?, ?, 0, ?, "  # noqa: S608
            "NULL, NULL, NULL, NULL)",
            (
                run_id,
                runbook,
                who,
                time.time(),
                json.dumps(parameters, sort_keys=True),
                notebook,
                os.getpid(),
                cells_total,
            ),
        )
        return self.get(run_id)

    def progress(self, run_id: str, cells_done: int) -> None:
        self.db.execute("UPDATE runs SET cells_done = ? WHERE id = ?", (cells_done, run_id))

    def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        verdict: dict[str, Any] | None = None,
        healthy: bool | None = None,
        error: str | None = None,
        failed_cell: int | None = None,
    ) -> RunRecord:
        self.db.execute(
            "UPDATE runs SET status = ?, finished = ?, verdict = ?, healthy = ?, error = ?, "
            "failed_cell = ? WHERE id = ?",
            (
                status,
                time.time(),
                None if verdict is None else json.dumps(verdict),
                None if healthy is None else int(healthy),
                error,
                failed_cell,
                run_id,
            ),
        )
        return self.get(run_id)

    def get(self, run_id: str) -> RunRecord:
        rows = self.db.query(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,))  # noqa: S608
        if not rows:
            raise RunNotFound(
                f"there is no run {run_id!r}", hint="`nexus-ops runbook runs` lists the recent runs"
            )
        return _record(rows[0])

    def recent(self, limit: int = 50, runbook: str | None = None) -> list[RunRecord]:
        """The newest runs first."""
        where, params = ("WHERE runbook = ?", [runbook]) if runbook else ("", [])
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM runs {where} ORDER BY started DESC LIMIT ?",  # noqa: S608
            [*params, limit],
        )
        return [_record(row) for row in rows]


def _record(row: tuple[Any, ...]) -> RunRecord:
    (
        run_id,
        runbook,
        who,
        started,
        finished,
        parameters,
        status,
        notebook,
        pid,
        done,
        total,
        healthy,
        verdict,
        error,
        failed_cell,
    ) = row
    if status == "running" and not pid_alive(pid):
        status, error = "interrupted", error or f"the process running it (pid {pid}) is gone"
    return RunRecord(
        id=run_id,
        runbook=runbook,
        who=who,
        started=started,
        finished=finished,
        parameters=json.loads(parameters),
        status=status,
        notebook=notebook,
        pid=pid,
        cells_done=done,
        cells_total=total,
        healthy=None if healthy is None else bool(healthy),
        verdict=None if verdict is None else json.loads(verdict),
        error=error,
        failed_cell=failed_cell,
    )
