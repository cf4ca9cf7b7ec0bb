"""Upgrades of OpenCode behind a health gate and a probation, and their rollback.

An upgrade, each step written to the operation record (:mod:`.record`) before it
begins and journaled: install the version if missing; wait until no session is
busy (at most NEXUS_DRAIN_TIMEOUT) and note what the server serves (the gate's
snapshot); take a ``pre-upgrade`` backup; stop the server; make the new version
active; start it; the health gate (:mod:`.gate`); then the probation
(NEXUS_UPGRADE_PROBATION minutes) during which a crash, a hang or a failed probe
fails the upgrade. A failed gate or probation rolls back at once.

A rollback (automatic, or asked for): stop the server; move the new version's
``opencode.db`` (and its ``-wal``, ``-shm``) aside into
``NEXUS_HOME/upgrades/<id>/``, so that nothing written after the upgrade is lost;
restore the pre-upgrade backup's data over the live folder (the live restore of
:mod:`nexus_ops.backup`); make the previous version active; start it; check it.

An agent killed half-way leaves the record; the next agent settles it
(:meth:`UpgradeService.settle`): before the new version was activated nothing of
the server changed, and its desired state is put back; from then on the operation
is rolled back (again, if it was rolling back), never leaving the new binary with
the old database or the server stopped for good.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nexus_ops.backup import BackupService, CallbackControl
from nexus_ops.backup.sources import OpenCodeLocations
from nexus_ops.config import Settings
from nexus_ops.errors import NexusOpsError, ParameterError
from nexus_ops.models import ServerState
from nexus_ops.opencode import Credentials, OpenCodeClient
from nexus_ops.paths import Layout, fsync_dir
from nexus_ops.process import pid_alive
from nexus_ops.store import Journal
from nexus_ops.supervisor import stored_desired
from nexus_ops.upgrade.control import UpgradeControl
from nexus_ops.upgrade.gate import gate_problems, take_snapshot
from nexus_ops.upgrade.record import (
    UNCHANGED_STEPS,
    Operation,
    OperationRecord,
    Outcome,
    Snapshot,
    load_record,
    write_record,
)
from nexus_ops.upgrade.registry import check_published, newest_version
from nexus_ops.versions import Versions, check_version
from nexus_ops.versions.install import remove_stale_staging

# Journal event kinds.
UPGRADE_STARTED, UPGRADE_STEP = "upgrade_started", "upgrade_step"
UPGRADE_DONE, UPGRADE_FAILED = "upgrade_done", "upgrade_failed"
ROLLBACK_STARTED, ROLLBACK_DONE, ROLLBACK_FAILED = (
    "rollback_started",
    "rollback_done",
    "rollback_failed",
)
UPGRADE_SETTLED = "upgrade_interrupted"
# Counters kept in the journal's state (they outlive the agent): see :meth:`counts`.
OUTCOME_KEY, ROLLBACKS_KEY = "upgrade_outcome.", "rollbacks_total"
DB_FILES = ("opencode.db", "opencode.db-wal", "opencode.db-shm")
POLL = 0.5


class UpgradeError(ParameterError):
    """An upgrade or a rollback that cannot be done as asked (HTTP 400)."""


class UpgradeFailed(NexusOpsError):
    """A step of an upgrade failed; the upgrade is rolled back (or was not begun)."""


@dataclass(frozen=True)
class Plan:
    """What an upgrade would do (a dry run shows it and changes nothing)."""

    from_version: str
    to_version: str
    install: bool
    backup: str
    drain: str
    gate: list[str]
    probation_minutes: float

    def as_json(self) -> dict[str, object]:
        return {
            "from": self.from_version,
            "to": self.to_version,
            "install": self.install,
            "backup": self.backup,
            "drain": self.drain,
            "gate": self.gate,
            "probation_minutes": self.probation_minutes,
        }


class UpgradeService:
    """Upgrades and rollbacks of this host's OpenCode (one at a time)."""

    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        versions: Versions,
        backups: BackupService,
        control: UpgradeControl,
        *,
        locations: OpenCodeLocations | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.layout = Layout(settings.home)
        self.folder = self.layout.upgrades
        self.journal = journal
        self.versions = versions
        self.backups = backups
        self.control = control
        self.locations = locations or backups.locations
        self._clock = clock
        self._lock = threading.Lock()
        self.record: OperationRecord | None = load_record(self.folder)

    # ---- what is there -----------------------------------------------------------------

    def status(self) -> OperationRecord | None:
        """The current or the last operation."""
        return self.record or load_record(self.folder)

    def counts(self) -> tuple[dict[str, int], int]:
        """Upgrades by outcome, and rollbacks, since this NEXUS_HOME began."""
        outcomes = ("upgraded", "rolled back", "failed", "abandoned")
        by = {o: int(self.journal.get(OUTCOME_KEY + o, "0") or 0) for o in outcomes}
        return by, int(self.journal.get(ROLLBACKS_KEY, "0") or 0)

    def plan(self, version: str | None, probation: float | None = None) -> Plan:
        """Check the request and say what the upgrade would do; nothing changes."""
        if self.settings.opencode_bin is not None:
            raise UpgradeError(
                f"NEXUS_OPENCODE_BIN is set: the server runs {self.settings.opencode_bin}, "
                "not a managed version, so there is nothing to upgrade",
                hint="unset NEXUS_OPENCODE_BIN and install a version "
                "(`nexus-ops opencode install VERSION --activate`)",
            )
        current = self.versions.active()
        if current is None:
            raise UpgradeError(
                "no OpenCode version is active, so there is nothing to upgrade",
                hint="install one first: `nexus-ops opencode install VERSION --activate`",
            )
        target = version or newest_version()
        try:
            check_version(target)
        except NexusOpsError as exc:
            raise UpgradeError(exc.message, hint=exc.hint) from exc
        if target == current:
            raise UpgradeError(
                f"OpenCode {target} is already the active version",
                hint="give another VERSION (`npm view opencode-ai versions`)",
            )
        missing = self.versions.binary_of(target) is None
        if missing:
            try:
                check_published(target)
            except NexusOpsError as exc:
                raise UpgradeError(exc.message, hint=exc.hint) from exc
        minutes = self.settings.upgrade_probation if probation is None else probation
        if minutes < 0:
            raise UpgradeError(
                f"--probation {minutes:g} is negative", hint="give minutes >= 0 (e.g. 5 or 0.5)"
            )
        return Plan(
            from_version=current,
            to_version=target,
            install=missing,
            backup=f"a pre-upgrade backup of {self.locations.data_dir} and "
            f"{self.locations.config_dir}, kept by retention apart from the others",
            drain=f"wait until no session is busy, at most {self.settings.drain_timeout:g} s "
            "(NEXUS_DRAIN_TIMEOUT), then stop the server",
            gate=[
                f"healthy within {self.settings.upgrade_gate_timeout:g} s "
                "(NEXUS_UPGRADE_GATE_TIMEOUT)",
                f"/global/health answers version {target}",
                f"PRAGMA integrity_check of {self.locations.database} is ok",
                "GET /session lists every session listed before",
                "the last messages of a few sessions read back with the same ids",
            ],
            probation_minutes=minutes,
        )

    # ---- an upgrade --------------------------------------------------------------------

    def begin(
        self, version: str | None, probation: float | None = None, trigger: str = "cli"
    ) -> tuple[OperationRecord, Plan]:
        """Check the request, write the record and return it; :meth:`run` does the work."""
        plan = self.plan(version, probation)
        if not self._lock.acquire(blocking=False):
            raise self._busy()
        current = self.status()
        if current is not None and current.running:
            self._lock.release()
            raise self._busy()
        record = self._new_record("upgrade", plan.from_version, plan.to_version, trigger)
        self._save(record)
        self._journal(
            UPGRADE_STARTED,
            f"upgrade of OpenCode {plan.from_version} to {plan.to_version} begins",
            plan.as_json(),
        )
        return record, plan

    def run(self, plan: Plan) -> OperationRecord:
        """The upgrade :meth:`begin` wrote; returns its finished record (the lock released)."""
        try:
            return self._upgrade(plan)
        finally:
            self._lock.release()

    def upgrade(
        self, version: str | None, probation: float | None = None, trigger: str = "cli"
    ) -> OperationRecord:
        """:meth:`begin` then :meth:`run`, in this thread."""
        _, plan = self.begin(version, probation, trigger)
        return self.run(plan)

    def _upgrade(self, plan: Plan) -> OperationRecord:
        changed = False
        try:
            self._step("installing")
            self.versions.install(
                plan.to_version, self._note, keep=self.settings.opencode_keep_versions
            )
            self._step("draining")
            self._wait_idle()
            snapshot = self._snapshot() if self._serving() else None
            self._save(self._current().model_copy(update={"snapshot": snapshot}))
            self._step("backing up")
            manifest = self.backups.create(kind="pre-upgrade", trigger="upgrade")
            self._save(self._current().model_copy(update={"backup_id": manifest.id}))
            self._note(f"pre-upgrade backup {manifest.id}")
            self._step("stopping")
            self.control.stop(drain=True)
            changed = True
            self._step("activating")
            self.versions.use(plan.to_version)
            self._step("starting")
            self.control.start()
            self.control.wait_healthy(self.settings.upgrade_gate_timeout)
            self._step("gate")
            self._gate(plan.to_version)
            self._step("probation", f"{plan.probation_minutes:g} min")
            self._probation(plan.probation_minutes * 60)
        except NexusOpsError as exc:
            return self._failed(exc, changed)
        except OSError as exc:  # a file the upgrade moves or writes: still settled here
            return self._failed(UpgradeFailed(f"{type(exc).__name__}: {exc}"), changed)
        return self._finish("upgraded", UPGRADE_DONE, f"upgraded OpenCode to {plan.to_version}")

    def _failed(self, exc: NexusOpsError, changed: bool) -> OperationRecord:
        record = self._current()
        self._journal(
            UPGRADE_FAILED,
            f"upgrade to {record.to_version} failed while {record.step}: {exc.message}",
            {"step": record.step, "error": exc.message},
        )
        self._save(record.noted(exc.message).model_copy(update={"error": exc.message}))
        if changed:
            return self._rollback(automatic=True)
        self._put_back_desired()
        return self._finish("failed", None, "", error=exc.message, ok=False)

    def _snapshot(self) -> Snapshot:
        client = self._client()
        try:
            return take_snapshot(client)
        finally:
            client.close()

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.settings.drain_timeout
        while self.control.status().busy_sessions and time.monotonic() < deadline:
            time.sleep(POLL)

    def _serving(self) -> bool:
        status = self.control.status()
        return status.state is ServerState.RUNNING and status.healthy

    def _gate(self, version: str, failing: str = "the health gate failed") -> None:
        """The gate's checks of ``version`` against the snapshot; raise naming what failed."""
        client = self._client()
        try:
            snapshot = self._current().snapshot
            problems = gate_problems(client, version, self.locations.database, snapshot)
        finally:
            client.close()
        if problems:
            raise UpgradeFailed(f"{failing}: " + "; ".join(problems))
        self._note("every check passed")

    def _probation(self, seconds: float) -> None:
        """Fail on a crash, a hang (the supervisor's restarts) or failed probes."""
        first = self.control.status()
        client = self._client()
        failures, deadline = 0, time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                time.sleep(POLL)
                now = self.control.status()
                if now.pid != first.pid or now.restarts != first.restarts:
                    why = now.last_exit or now.last_error or f"state {now.state.value}"
                    raise UpgradeFailed(f"the new server went during probation: {why}")
                try:
                    client.health()
                    failures = 0
                except NexusOpsError as exc:
                    failures += 1
                    if failures >= self.settings.probe_failures:
                        raise UpgradeFailed(
                            f"the new server stopped answering during probation: {exc.message}"
                        ) from exc
        finally:
            client.close()
        self._note("no crash, hang or failed probe")

    # ---- a rollback --------------------------------------------------------------------

    def rollback(self, trigger: str = "cli") -> OperationRecord:
        """Roll the last upgrade back by hand (its pre-upgrade backup, its previous version)."""
        if not self._lock.acquire(blocking=False):
            raise self._busy()
        try:
            last = self.status()
            if last is not None and last.running:
                raise self._busy()
            active = self.versions.active()
            if (
                last is None
                or last.operation != "upgrade"
                or last.outcome != "upgraded"
                or last.backup_id is None
            ):
                raise UpgradeError(
                    "there is no finished upgrade to roll back",
                    hint="`nexus-ops opencode upgrade --status` shows the last operation; "
                    "`nexus-ops opencode use VERSION` picks a version by hand",
                )
            if active != last.to_version:
                raise UpgradeError(
                    f"the active version is {active}, not {last.to_version} that the last "
                    "upgrade installed, so it is not rolled back",
                    hint="`nexus-ops opencode use VERSION` then `nexus-ops server restart`",
                )
            record = self._new_record(
                "rollback", last.to_version, last.from_version, trigger
            ).model_copy(update={"backup_id": last.backup_id, "snapshot": last.snapshot})
            self._save(record)
            return self._rollback(automatic=False)
        finally:
            self._lock.release()

    def _rollback(self, automatic: bool) -> OperationRecord:
        record = self._current().model_copy(update={"rolling_back": True})
        self._save(record)
        new, old = self._versions_of(record)
        self._journal(
            ROLLBACK_STARTED,
            f"rollback of OpenCode {new} to {old} begins"
            + (" (the upgrade failed)" if automatic else ""),
            {"backup": record.backup_id, "automatic": automatic},
        )
        started = time.monotonic()
        try:
            self._roll_back_steps(record, drain=not automatic)
        except (NexusOpsError, OSError) as exc:
            exc = exc if isinstance(exc, NexusOpsError) else UpgradeFailed(f"{exc!r}")
            self._journal(
                ROLLBACK_FAILED,
                f"rollback to {old} failed while {self._current().step}: {exc.message}",
                {"error": exc.message, "aside": self._current().aside},
            )
            return self._finish("failed", None, "", error=exc.message, ok=False)
        self._count(ROLLBACKS_KEY)
        aside = self._current().aside
        return self._finish(
            "rolled back",
            ROLLBACK_DONE,
            f"rolled back to OpenCode {old} in {time.monotonic() - started:.1f} s; the "
            f"database of {new} is kept in {aside}",
            details={"aside": aside, "seconds": round(time.monotonic() - started, 2)},
        )

    def _roll_back_steps(self, record: OperationRecord, drain: bool) -> None:
        new, old = self._versions_of(record)
        if record.backup_id is None:
            raise UpgradeFailed("there is no pre-upgrade backup to restore")
        self._step("stopping")
        self.control.stop(drain=drain)
        self._step("moving aside")
        self._move_aside(new)
        self._step("restoring", f"backup {record.backup_id}")

        def start_previous() -> None:
            self._step("activating previous", old)
            self.versions.use(old)
            self.control.start()

        control = CallbackControl(
            stop=lambda: None, start=start_previous, wait_healthy=self.control.wait_healthy
        )
        report = self.backups.restore_live(
            record.backup_id,
            control,
            ["data"],
            trigger="rollback",
            health_timeout=self.settings.upgrade_gate_timeout,
        )
        if not report.ok:
            raise UpgradeFailed(f"restoring backup {record.backup_id} failed: {report.error}")
        self._step("checking")
        self._gate(old, "after the rollback")

    def _move_aside(self, version: str) -> None:
        """The live database files into ``upgrades/<id>/opencode-db-<version>``."""
        record = self._current()
        aside = Path(record.aside) if record.aside else self.folder / record.id / f"db-{version}"
        if record.moved_aside:
            self._note(f"already moved aside to {aside}")
            return
        aside.mkdir(parents=True, exist_ok=True)
        self._save(record.model_copy(update={"aside": str(aside)}))
        for name in DB_FILES:
            live = self.locations.data_dir / name
            if live.exists():
                target = aside / name
                if target.exists():  # a move of an earlier, interrupted attempt: keep both
                    target = aside / f"{name}.{int(self._clock())}"
                live.rename(target)
        fsync_dir(aside)
        self._save(self._current().model_copy(update={"moved_aside": True}))
        self._note(f"moved {', '.join(DB_FILES)} to {aside}")

    # ---- an interrupted operation ------------------------------------------------------

    def settle(self) -> OperationRecord | None:
        """Finish or roll back an operation whose agent was killed (see the module's
        docstring); None when there was nothing to settle."""
        record = load_record(self.folder)
        if record is None or not record.running:
            return None
        if record.pid == os.getpid() or pid_alive(record.pid):
            return None  # under way, here or in a process still alive
        with self._lock:
            self.record = record.model_copy(update={"pid": os.getpid()})
            self._save(self.record)
            rolling = record.rolling_back or record.operation == "rollback"
            self._journal(
                UPGRADE_SETTLED,
                f"{record.operation} {record.from_version} -> {record.to_version} was "
                f"interrupted while {record.step}: "
                + ("rolled back" if rolling or record.step not in UNCHANGED_STEPS else "abandoned"),
                {"step": record.step, "id": record.id},
            )
            if rolling or record.step not in UNCHANGED_STEPS:
                return self._rollback(automatic=True)
            remove_stale_staging(self.versions.root)
            self._put_back_desired()
            return self._finish(
                "abandoned", None, "", error=f"interrupted while {record.step}", ok=False
            )

    # ---- helpers -----------------------------------------------------------------------

    def _new_record(
        self, operation: Operation, from_version: str, to_version: str, trigger: str
    ) -> OperationRecord:
        return OperationRecord(
            id=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:4],
            operation=operation,
            from_version=from_version,
            to_version=to_version,
            desired_before=stored_desired(self.journal),
            trigger=trigger,
            started=self._clock(),
        )

    def _put_back_desired(self) -> None:
        record = self._current()
        status = self.control.status()
        if record.desired_before == "running" and status.state is ServerState.STOPPED:
            self.control.start()

    def _versions_of(self, record: OperationRecord) -> tuple[str, str]:
        """(the version rolled back from, the one rolled back to)."""
        if record.operation == "rollback":
            return record.from_version, record.to_version
        return record.to_version, record.from_version

    def _client(self) -> OpenCodeClient:
        password = self.layout.server_password_file.read_text(encoding="utf-8").strip()
        credentials = Credentials(self.settings.opencode_username, password)
        return OpenCodeClient(
            self.settings.opencode_base_url, credentials, timeout=self.settings.probe_timeout
        )

    def _current(self) -> OperationRecord:
        assert self.record is not None
        return self.record

    def _save(self, record: OperationRecord) -> None:
        self.record = record
        write_record(self.folder, record)

    def _step(self, name: str, detail: str = "") -> None:
        record = self._current().entered(name, self._clock(), detail)
        self._save(record)
        what = "rollback" if record.rolling_back or record.operation == "rollback" else "upgrade"
        self._journal(
            UPGRADE_STEP,
            f"{what} {record.from_version} -> {record.to_version}: {name}"
            + (f" ({detail})" if detail else ""),
            {"id": record.id, "step": name},
        )

    def _note(self, detail: str) -> None:
        self._save(self._current().noted(detail))

    def _finish(
        self,
        outcome: Outcome,
        kind: str | None,
        message: str,
        *,
        error: str | None = None,
        ok: bool = True,
        details: dict[str, object] | None = None,
    ) -> OperationRecord:
        record = self._current()
        if record.operation == "upgrade":
            self._count(OUTCOME_KEY + outcome)
        finished = record.ended(outcome, self._clock(), error or record.error, ok)
        self._save(finished)
        if kind is not None:
            self._journal(kind, message, {"id": record.id, **(details or {})})
        return finished

    def _count(self, key: str) -> None:
        self.journal.put(key, str(int(self.journal.get(key, "0") or 0) + 1))

    def _busy(self) -> UpgradeError:
        return UpgradeError(
            "an upgrade or a rollback is already running",
            hint="follow it with `nexus-ops opencode upgrade --status`",
        )

    def _journal(self, kind: str, message: str, details: dict[str, object]) -> None:
        self.journal.record(kind, message=message, details=dict(details))
