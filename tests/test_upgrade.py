"""Upgrades of the real OpenCode under a real agent: across a database migration
(1.15.13 -> 1.18.33, installed by the real npm), the dry run, bad versions, the
manual rollback, a new version that stops answering during its probation, and the
agent killed (kill -9) during the install, the gate and the rollback."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from backup_helpers import prepare_opencode_config
from conftest import nexus_cli, wait_for
from upgrade_helpers import NEW, OLD, Host, lay_out_new, lay_out_stalling, open_host

from nexus_ops.opencode import native_binary_in
from nexus_ops.store.backups_copy import session_ids
from nexus_ops.ui.base import PanelContext
from nexus_ops.ui.server import ServerPanel
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
    exposed = host.agent.client.metrics_text()
    assert 'opencode_upgrades_total{outcome="upgraded"} 1.0' in exposed
    assert "opencode_rollbacks_total 0.0" in exposed


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
    exposed = host.agent.client.metrics_text()
    assert "opencode_rollbacks_total 1.0" in exposed
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


# ---- kill -9 of the agent half-way: the next agent settles the operation -------------


def begin_in_background(host: Host, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nexus_ops", "opencode", *args],
        env=host.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def kill_agent_at(host: Host, command: subprocess.Popen[str], steps: set[str]) -> str:
    """kill -9 the agent as soon as the operation reaches one of ``steps``; the step."""
    step = wait_for(lambda: host.step() in steps and host.step(), 120, 0.005, what=str(steps))
    children = psutil.Process(host.agent.proc.pid).children(recursive=True)
    host.agent.proc.kill()
    host.agent.proc.wait(timeout=10)
    for child in children:  # npm, which an install runs in a session of its own
        with contextlib.suppress(psutil.Error):
            if "serve" not in child.cmdline():
                child.kill()
    command.kill()
    command.communicate(timeout=10)
    return str(step)


def test_kill_9_during_the_install_leaves_the_old_version_running(host: Host) -> None:
    before = host.fill(sessions=2)
    command = begin_in_background(host, "upgrade", NEW)  # a real npm install
    assert kill_agent_at(host, command, {"installing"}) == "installing"
    host.restart_agent()
    record = host.wait_settled()
    assert record["outcome"] == "abandoned" and "interrupted while installing" in record["error"]
    host.check_consistent(OLD, before)
    [settled] = host.events("upgrade_interrupted")
    assert "interrupted while installing: abandoned" in settled.message
    assert not any(p.name.startswith(".staging-") for p in (host.home / "opencode").iterdir())


def test_kill_9_during_the_gate_rolls_the_upgrade_back(host: Host, opencode_bin: Path) -> None:
    before = host.fill(sessions=2)
    lay_out_new(opencode_bin, host)
    command = begin_in_background(host, "upgrade", NEW, "--probation", "1")
    step = kill_agent_at(host, command, {"starting", "gate"})
    host.restart_agent()
    record = host.wait_settled()
    assert record["outcome"] == "rolled back", record
    host.check_consistent(OLD, before)
    [settled] = host.events("upgrade_interrupted")
    assert f"interrupted while {step}: rolled back" in settled.message
    assert (Path(record["aside"]) / "opencode.db").is_file()


def test_kill_9_during_the_rollback_finishes_it(host: Host, opencode_bin: Path) -> None:
    before = host.fill(sessions=2)
    lay_out_new(opencode_bin, host)
    assert upgrade(host, NEW)[0] == 0
    [new_session] = set(host.fill(sessions=1)) - set(before)
    command = begin_in_background(host, "rollback")
    kill_agent_at(host, command, {"restoring"})
    host.restart_agent()
    record = host.wait_settled()
    assert record["operation"] == "rollback" and record["outcome"] == "rolled back", record
    host.check_consistent(OLD, before)
    assert new_session in (session_ids(Path(record["aside"]) / "opencode.db") or [])
    assert host.events("upgrade_interrupted") and host.events("rollback_done")


def test_the_server_tab_shows_the_upgrade_and_its_buttons_drive_it(
    host: Host, opencode_bin: Path
) -> None:
    before = host.fill(sessions=1)
    lay_out_new(opencode_bin, host)
    panel = ServerPanel(PanelContext(client=host.agent.client, run=lambda work: work()))
    box = panel.upgrade
    assert panel.refresh() and "no upgrade yet" in box.summary.value
    assert not box.upgrade_button.disabled and box.rollback_button.disabled
    box.version.value = NEW
    box.ask("upgrade")
    assert f"Upgrade OpenCode to {NEW}?" in box.question.value
    assert box.confirm.layout.display is None
    box.confirmed()  # begins it; the agent runs it
    host.wait_settled()
    assert box.refresh()
    assert "upgraded" in box.summary.value and "probation" in box.summary.value
    assert not box.rollback_button.disabled
    box.ask("rollback")
    box.confirmed()  # waits for the rollback
    assert "Last rollback" in box.summary.value and "rolled back" in box.summary.value
    assert "database kept aside in" in box.summary.value
    host.check_consistent(OLD, before)
