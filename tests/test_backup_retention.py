"""Retention (restic's rules), the cron schedule, and the backup metrics."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from nexus_ops.backup.metrics import BackupCollector
from nexus_ops.backup.models import BackupInfo, Manifest
from nexus_ops.backup.prune import decide
from nexus_ops.backup.retention import RetentionPolicy, plan
from nexus_ops.backup.schedule import BackupScheduler, next_run
from nexus_ops.config import load_settings
from nexus_ops.errors import BackupError, ConfigError
from nexus_ops.store import Database
from nexus_ops.store.backups import BackupRuns

START = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)


def daily(days: int, per_day: int = 1) -> list[tuple[str, float]]:
    """Backups at 02:00 (and every hour after, per_day of them) for ``days`` days."""
    out = []
    for day in range(days):
        for hour in range(per_day):
            when = START + timedelta(days=day, hours=hour)
            out.append((f"{when:%Y%m%dT%H}", when.timestamp()))
    return out


def kept(backups: list[tuple[str, float]], policy: RetentionPolicy) -> list[str]:
    return sorted(d.id for d in plan(backups, policy, tz=UTC) if d.keep)


def test_default_keeps_30_days_like_the_seed() -> None:
    backups = daily(45)
    result = kept(backups, RetentionPolicy())
    assert len(result) == 31  # the newest and the 30 days before it
    assert result[0] == "20260115T02"


def test_keep_within_counts_from_the_newest_backup_not_from_now() -> None:
    # Backups stopped long ago: keep-within still keeps the last month of them.
    assert len(kept(daily(10), RetentionPolicy(keep_within_days=3))) == 4


def test_keep_daily_keeps_the_newest_backup_of_each_day() -> None:
    result = kept(daily(5, per_day=3), RetentionPolicy(keep_daily=2, keep_within_days=0))
    assert result == ["20260104T04", "20260105T04"]


def test_keep_weekly_and_monthly_use_iso_weeks_and_months() -> None:
    backups = daily(70)
    weekly = kept(backups, RetentionPolicy(keep_weekly=3, keep_within_days=0))
    assert len(weekly) == 3
    assert all(datetime.strptime(w, "%Y%m%dT%H").weekday() == 6 for w in weekly[:-1])  # Sundays
    monthly = kept(backups, RetentionPolicy(keep_monthly=12, keep_within_days=0))
    assert monthly == ["20260131T02", "20260228T02", "20260311T02"]


def test_rules_combine_and_each_decision_says_why() -> None:
    decisions = plan(
        daily(10), RetentionPolicy(keep_last=1, keep_daily=3, keep_within_days=0), tz=UTC
    )
    newest = decisions[0]
    assert newest.keep and newest.reasons == ["last", "daily 2026-01-10"]
    assert [d.keep for d in decisions].count(True) == 3
    assert decisions[-1].reasons == []


def test_pre_upgrade_backups_are_judged_apart_so_the_newest_is_kept() -> None:
    def made(backup_id: str, kind: str, day: int) -> Manifest:
        created = (START + timedelta(days=day)).timestamp()
        return Manifest.model_validate(
            {"id": backup_id, "kind": kind, "created": created, "host": "h"}
        )

    # The pre-upgrade backup is older than the two newest regular ones.
    manifests = [made("u1", "pre-upgrade", 0), made("r1", "manual", 1), made("r2", "manual", 2)]
    policy = RetentionPolicy(keep_last=2, keep_within_days=0)
    decisions = {d.id: d.keep for d in decide(manifests, policy, tz=UTC)}
    assert decisions == {"u1": True, "r1": True, "r2": True}


def test_a_policy_that_keeps_nothing_is_refused() -> None:
    with pytest.raises(BackupError, match="keeps nothing"):
        plan(daily(3), RetentionPolicy(keep_within_days=0))


def test_next_run_follows_cron_in_local_time() -> None:
    assert next_run("0 2 * * *", datetime(2026, 3, 1, 2, 0)) == datetime(2026, 3, 2, 2, 0)
    assert next_run("*/15 * * * *", datetime(2026, 3, 1, 2, 7)) == datetime(2026, 3, 1, 2, 15)
    assert next_run("off", datetime(2026, 3, 1)) is None
    with pytest.raises(BackupError, match="not a cron expression"):
        next_run("daily", datetime(2026, 3, 1))


def test_a_bad_schedule_setting_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="NEXUS_BACKUP_SCHEDULE='at night'"):
        load_settings({"NEXUS_BACKUP_SCHEDULE": "at night"})
    assert load_settings({}).backup_schedule == "0 2 * * *"


def test_scheduler_runs_the_job_at_each_time_and_survives_failures() -> None:
    clock = [datetime(2026, 3, 1, 1, 59, 30)]
    runs: list[datetime] = []

    async def sleep(seconds: float) -> None:
        clock[0] += timedelta(seconds=seconds)

    async def job() -> None:
        runs.append(clock[0])
        if len(runs) == 2:
            raise BackupError("disk full")
        if len(runs) == 3:
            raise asyncio.CancelledError

    scheduler = BackupScheduler("0 2 * * *", job, now=lambda: clock[0], sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scheduler.run())
    assert runs == [datetime(2026, 3, d, 2, 0) for d in (1, 2, 3)]
    assert scheduler.runs == 1 and scheduler.failures == 1


def test_backup_metrics_pass_promtool(tmp_path: Path) -> None:
    runs = BackupRuns(Database(tmp_path / "n.db"))
    runs.record("create", trigger="schedule", started=100.0, finished=103.5, ok=True, size=4096)
    runs.record("create", trigger="schedule", started=200.0, finished=201.0, ok=False)
    info = BackupInfo(
        id="x",
        kind="scheduled",
        created=100.0,
        size=4096,
        files=3,
        parts=["data"],
        opencode_version="1",
        host="h",
    )
    registry = CollectorRegistry()
    registry.register(BackupCollector(runs, lambda: [info]))
    text = generate_latest(registry).decode()
    assert "nexus_backup_last_success_timestamp_seconds 103.5" in text
    assert "nexus_backup_last_duration_seconds 3.5" in text
    assert 'nexus_backup_operations_total{operation="create",outcome="error"} 1.0' in text
    assert 'nexus_backups{kind="scheduled"} 1.0' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make system-deps)")
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
