"""`nexus-ops backup ...` and `nexus-ops runbook ...` as a user types them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from backup_helpers import make_opencode_tree
from conftest import nexus_cli, private_env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environment = private_env(tmp_path / "env")
    live = make_opencode_tree(tmp_path / "live")
    environment["XDG_CONFIG_HOME"] = str(live.config_dir.parent)
    environment["XDG_DATA_HOME"] = str(live.data_dir.parent)
    return environment


def test_create_list_verify_restore_prune(env: dict[str, str], tmp_path: Path) -> None:
    created = nexus_cli(env, "backup", "create", "--json")
    assert created.returncode == 0, created.stderr
    manifest = json.loads(created.stdout)
    assert manifest["databases"][0]["sessions"] == 3
    listed = nexus_cli(env, "backup", "list")
    assert manifest["id"] in listed.stdout and "3 sessions" in listed.stdout
    verified = nexus_cli(env, "backup", "verify")
    assert verified.returncode == 0 and "OK" in verified.stdout
    target = tmp_path / "out"
    restored = nexus_cli(env, "backup", "restore", manifest["id"], "--to", str(target))
    assert restored.returncode == 0, restored.stderr
    conn = sqlite3.connect(target / "data" / "opencode.db")
    assert conn.execute("SELECT COUNT(*) FROM session").fetchone()[0] == 3
    conn.close()
    plan = nexus_cli(
        env, "backup", "prune", "--dry-run", "--keep-last", "1", "--keep-within-days", "0"
    )
    assert plan.returncode == 0 and "would remove 0 backup(s), kept 1" in plan.stdout


def test_backup_errors_are_messages_not_tracebacks(env: dict[str, str], tmp_path: Path) -> None:
    missing = nexus_cli(env, "backup", "verify", "20990101T000000Z-none")
    assert missing.returncode == 1
    assert "there is no backup '20990101T000000Z-none'" in missing.stderr
    assert "Traceback" not in missing.stderr
    nothing = nexus_cli(env, "backup", "prune", "--keep-within-days", "0")
    assert nothing.returncode == 1 and "keeps nothing" in nothing.stderr
    where = nexus_cli(env, "backup", "restore", "x")
    assert where.returncode == 2 and "--to" in where.stderr
    bad = nexus_cli({**env, "NEXUS_BACKUP_KEEP_DAILY": "many"}, "backup", "list")
    assert bad.returncode == 2 and "NEXUS_BACKUP_KEEP_DAILY='many'" in bad.stderr


def test_runbook_list_show_and_refused_parameters(env: dict[str, str]) -> None:
    listed = nexus_cli(env, "runbook", "list")
    assert listed.returncode == 0
    for name in ("application_failure", "backup", "database_failure", "network_failure", "restore"):
        assert name in listed.stdout
    shown = nexus_cli(env, "runbook", "show", "restore")
    assert "backup_id: str = ''" in shown.stdout and "dry_run: bool = True" in shown.stdout
    typo = nexus_cli(env, "runbook", "run", "backup", "-p", "dryrun", "false")
    assert typo.returncode == 1
    assert "unknown parameter 'dryrun'; did you mean 'dry_run'?" in typo.stderr
    wrong = nexus_cli(env, "runbook", "run", "backup", "-p", "max_age_hours", "a day")
    assert "parameter 'max_age_hours' expects float in [1..8760], got 'a day'" in wrong.stderr
    twice = nexus_cli(env, "runbook", "run", "backup", "-p", "dry_run", "1", "-p", "dry_run", "0")
    assert "given more than once: dry_run" in twice.stderr
    assert "Traceback" not in typo.stderr + wrong.stderr + twice.stderr
    runs = nexus_cli(env, "runbook", "runs")
    assert runs.returncode == 0 and runs.stdout == ""  # nothing ran


def test_runbook_run_records_who_and_verdict(env: dict[str, str]) -> None:
    done = nexus_cli(env, "runbook", "run", "backup", "-p", "dry_run", "false", "--who", "ann")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "backup: HEALTHY" in done.stdout and "by ann" in done.stdout
    assert "Executing" in done.stderr  # papermill's progress bar
    runs = json.loads(nexus_cli(env, "runbook", "runs", "--json").stdout)
    assert runs[0]["who"] == "ann" and runs[0]["parameters"]["dry_run"] is False
    assert runs[0]["parameters"]["max_age_hours"] == 26.0  # defaults are recorded too
    assert runs[0]["status"] == "succeeded" and runs[0]["healthy"] is True
    assert Path(runs[0]["notebook"]).is_file()
    listed = nexus_cli(env, "backup", "list", "--json")
    assert len(json.loads(listed.stdout)) == 1
