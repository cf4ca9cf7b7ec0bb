"""The operation record of an upgrade or a rollback: which step it reached, crash-safe.

One JSON file, ``NEXUS_HOME/upgrades/operation.json``, written atomically before
each step (the way a live restore keeps ``.restore-progress.json``). While
``outcome`` is None the operation is under way; an agent that finds such a record
whose process is gone (``kill -9``) settles it (:mod:`nexus_ops.upgrade.service`).
A finished record stays, so that the status shows the last operation.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> record = OperationRecord(id="u1", operation="upgrade", from_version="1.15.13",
...                          to_version="1.18.33", desired_before="running")
>>> write_record(folder, record.entered("installing", 1.0))
>>> load_record(folder).step
'installing'
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from nexus_ops.models import Desired
from nexus_ops.paths import atomic_write

RECORD_NAME = "operation.json"
Operation = Literal["upgrade", "rollback"]
Outcome = Literal["upgraded", "rolled back", "failed", "abandoned"]
UpgradeStep = Literal[
    "installing",
    "draining",
    "backing up",
    "stopping",
    "activating",
    "starting",
    "gate",
    "probation",
]
RollbackStep = Literal["moving aside", "restoring", "activating previous", "checking"]
Step = UpgradeStep | RollbackStep
# Upgrade steps before which nothing the server runs on has changed: settled by putting
# the desired state back. From "activating" on, the new version may have run.
UNCHANGED_STEPS: frozenset[str] = frozenset({"installing", "draining", "backing up", "stopping"})


class StepEntry(BaseModel):
    """One step: when it began and ended, and what it found."""

    name: str
    started: float
    ended: float | None = None
    ok: bool | None = None
    detail: str = ""


class Snapshot(BaseModel):
    """What the server served before the upgrade: its sessions and, for a few of
    them, the ids of their last messages."""

    sessions: list[str] = Field(default_factory=list)
    last_messages: dict[str, list[str]] = Field(default_factory=dict)


class OperationRecord(BaseModel):
    """An upgrade (or a rollback) of OpenCode; see the module's docstring."""

    id: str
    operation: Operation
    from_version: str
    to_version: str
    desired_before: Desired
    step: str = "installing"
    steps: list[StepEntry] = Field(default_factory=list)
    outcome: Outcome | None = None
    error: str | None = None
    backup_id: str | None = None
    aside: str | None = None
    moved_aside: bool = False
    rolling_back: bool = False
    snapshot: Snapshot | None = None
    trigger: str = "cli"
    started: float = 0.0
    finished: float | None = None
    pid: int = Field(default_factory=os.getpid)

    @property
    def running(self) -> bool:
        return self.outcome is None

    def entered(self, step: str, now: float, detail: str = "") -> OperationRecord:
        """This record with ``step`` begun (the previous step ended well)."""
        steps = [*self._closed(now, True), StepEntry(name=step, started=now, detail=detail)]
        return self.model_copy(update={"step": step, "steps": steps})

    def noted(self, detail: str) -> OperationRecord:
        """This record with ``detail`` added to the current step."""
        if not self.steps:
            return self
        last = self.steps[-1]
        text = f"{last.detail}; {detail}" if last.detail else detail
        steps = [*self.steps[:-1], last.model_copy(update={"detail": text})]
        return self.model_copy(update={"steps": steps})

    def ended(
        self, outcome: Outcome, now: float, error: str | None = None, ok: bool = True
    ) -> OperationRecord:
        """This record, finished with ``outcome`` (its last step ``ok`` or not)."""
        return self.model_copy(
            update={
                "outcome": outcome,
                "error": error,
                "finished": now,
                "steps": self._closed(now, ok),
            }
        )

    def _closed(self, now: float, ok: bool) -> list[StepEntry]:
        if not self.steps or self.steps[-1].ended is not None:
            return list(self.steps)
        last = self.steps[-1].model_copy(update={"ended": now, "ok": ok})
        return [*self.steps[:-1], last]


def record_path(folder: Path) -> Path:
    return folder / RECORD_NAME


def write_record(folder: Path, record: OperationRecord) -> None:
    atomic_write(record_path(folder), record.model_dump_json(indent=1).encode())


def load_record(folder: Path) -> OperationRecord | None:
    """The last operation's record; None when there is none (or it is unreadable)."""
    with contextlib.suppress(OSError, ValueError, ValidationError):
        return OperationRecord.model_validate_json(record_path(folder).read_bytes())
    return None
