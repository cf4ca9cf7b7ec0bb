"""Upgrades of the real OpenCode under a real agent: across a database migration
(1.15.13 -> 1.18.33, installed by the real npm), the dry run, bad versions, the
manual rollback, and a new version that stops answering during its probation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_helpers import prepare_opencode_config
from conftest import nexus_cli
from upgrade_helpers import NEW, OLD, Host, lay_out_new, lay_out_stalling, open_host

from nexus_ops.opencode import native_binary_in
from nexus_ops.store.backups_copy import session_ids
from nexus_ops.versions.install import install_version

pytestmark = [pytest.mark.opencode, pytest.mark.npm]


@pytest.fixture(scope="module")
def npm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("npm-cache")


@pytest.fixture(scope="module")
def old_modules(
    tmp_path_factory: pytest.TempPathFactory, npm_cache: Path, monkeypatch_module: None
) -> Path:
    """The real OpenCode 1.15.13, installed once for the module by npm."""
    folder = install_version(OLD, tmp_path_factory.mktemp("old"), lambda line: None)
    return folder / "node_modules"


@pytest.fixture(scope="module")
def monkeypatch_module(npm_cache: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("npm_config_cache", str(npm_cache))
        yield


@pytest.fixture(scope="module")
def old_config(old_modules: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = native_binary_in(old_modules)
    assert binary is not None
    return prepare_opencode_config(binary, tmp_path_factory.mktemp("old-config"))


@pytest.fixture
def host(tmp_path: Path, old_modules: Path, old_config: Path, npm_cache: Path) -> Iterator[Host]:
    with open_host(tmp_path, old_modules, old_config, npm_cache) as running:
        yield running


def upgrade(host: Host, *args: str) -> tuple[int, str, str]:
    done = nexus_cli(host.env, "opencode", "upgrade", *args, timeout=600)
    return done.returncode, done.stdout, done.stderr


def test_an_upgrade_across_a_database_migration_keeps_every_session_and_message(
    host: Host,
) -> None:
    before = host.fill()
    assert len(before) == 3 and all(len(ids) == 4 for ids in before.values())
    code, out, err = upgrade(host, NEW)  # installed by the real npm
    assert code == 0, out + err
    assert f"upgrade {OLD} -> {NEW} begun" in err
    for step in ("installing", "draining", "backing up", "stopping", "activating", "gate"):
        assert f"  {step} ..." in err
    assert f"upgrade {OLD} -> {NEW} (" in out and "): upgraded" in out
    host.check_consistent(NEW, before)
    assert sorted(before) == session_ids(host.database)
    record = host.record()
    assert record is not None and record["outcome"] == "upgraded"
    assert [s["name"] for s in record["steps"]][-1] == "probation"
    assert all(s["ok"] for s in record["steps"])
    [backup] = [b for b in host.agent.client.backups() if b.kind == "pre-upgrade"]
    assert record["backup_id"] == backup.id
    kinds = [e.kind for e in host.agent.client.events(limit=2000)]
    assert "upgrade_started" in kinds and "upgrade_done" in kinds
    assert "upgrade_failed" not in kinds and kinds.count("upgrade_step") >= 7
    status = nexus_cli(host.env, "opencode", "upgrade", "--status", "--json")
    shown = json.loads(status.stdout)
    assert shown["operation"]["outcome"] == "upgraded" and shown["upgrades"]["upgraded"] == 1


def test_the_dry_run_prints_the_plan_and_changes_nothing(host: Host, opencode_bin: Path) -> None:
    lay_out_new(opencode_bin, host)
    pid = host.agent.client.status().pid
    code, out, err = upgrade(host, NEW, "--dry-run")
    assert code == 0, err
    assert f"dry run: nothing is changed. Upgrade plan, OpenCode {OLD} -> {NEW}" in out
    assert "already installed" in out and "pre-upgrade backup" in out
    assert "NEXUS_DRAIN_TIMEOUT" in out and f"/global/health answers version {NEW}" in out
    assert host.record() is None and host.active() == OLD
    assert host.agent.client.status().pid == pid and not host.agent.client.backups()


@pytest.mark.parametrize(
    ("version", "says"),
    [
        ("1.x", "VERSION '1.x' is not an exact OpenCode version"),
        ("1.18.99", "VERSION '1.18.99' is not on the npm registry"),
        (OLD, f"OpenCode {OLD} is already the active version"),
    ],
)
def test_a_bad_version_gets_a_clear_error_and_changes_nothing(
    host: Host, version: str, says: str
) -> None:
    code, _, err = upgrade(host, version)
    assert code == 1
    assert says in err and "hint:" in err
    assert host.record() is None and host.active() == OLD


def test_the_manual_rollback_restores_the_old_version_and_keeps_the_new_database(
    host: Host, opencode_bin: Path
) -> None:
    before = host.fill(sessions=2)
    lay_out_new(opencode_bin, host)
    assert upgrade(host, NEW)[0] == 0
    after_upgrade = host.fill(sessions=1)  # written by the new version only
    [new_session] = set(after_upgrade) - set(before)
    started = time.monotonic()
    done = nexus_cli(host.env, "opencode", "rollback", "--json")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(done.stdout)
    assert record["operation"] == "rollback" and record["outcome"] == "rolled back"
    assert took < 30, f"the rollback took {took:.1f} s"
    host.check_consistent(OLD, before)
    assert new_session not in host.contents()
    aside = Path(record["aside"])
    assert aside.is_relative_to(host.home) and (aside / "opencode.db").is_file()
    assert new_session in (session_ids(aside / "opencode.db") or [])  # nothing lost
    [done_event] = host.events("rollback_done")
    assert str(aside) in done_event.message
    again = nexus_cli(host.env, "opencode", "rollback")
    assert again.returncode == 1 and "there is no finished upgrade to roll back" in again.stderr


def test_a_version_that_stops_answering_in_probation_is_rolled_back(
    host: Host, opencode_bin: Path
) -> None:
    before = host.fill(sessions=2)
    lay_out_stalling(opencode_bin, host, after=10)
    code, out, err = upgrade(host, NEW, "--probation", "0.75")
    assert code == 1, out + err
    record = host.record()
    assert record is not None and record["outcome"] == "rolled back", record
    assert "during probation" in (record["error"] or "")
    names = [s["name"] for s in record["steps"]]
    assert names.index("probation") < names.index("moving aside") < names.index("restoring")
    host.check_consistent(OLD, before)
    [failed] = host.events("upgrade_failed")
    assert "while probation" in failed.message
    [rolled] = host.events("rollback_done")
    assert record["aside"] in rolled.message
    assert (Path(record["aside"]) / "opencode.db").is_file()
