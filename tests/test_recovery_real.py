"""The runbooks against real faults of a real OpenCode server supervised by a real agent.

Each runbook runs with plain papermill (or through the agent's API), first as a dry
run, which must only report, then with ``dry_run=False``, which must repair.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from backup_helpers import install_config
from conftest import RunningAgent, start_agent, wait_for

from nexus_ops.runbooks import find_verdict
from nexus_ops.runbooks.verdict import Verdict

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.opencode


class OpenCode:
    """OpenCode's own API, as an operator would call it (basic auth, user opencode)."""

    def __init__(self, env: dict[str, str]) -> None:
        home = Path(env["NEXUS_HOME"])
        self.password = (home / "secrets" / "opencode.password").read_text().strip()
        self.url = f"http://127.0.0.1:{env['NEXUS_OPENCODE_PORT']}"
        self.data = Path(env["XDG_DATA_HOME"]) / "opencode"

    def new_session(self) -> str:
        response = httpx.post(
            f"{self.url}/session", json={}, auth=("opencode", self.password), timeout=30
        )
        response.raise_for_status()
        return str(response.json()["id"])

    def sessions(self) -> set[str]:
        response = httpx.get(f"{self.url}/session", auth=("opencode", self.password), timeout=10)
        response.raise_for_status()
        return {s["id"] for s in response.json()}


@pytest.fixture
def served(nexus_env: dict[str, str], opencode_config: Path) -> Iterator[RunningAgent]:
    """An agent whose server runs healthy, with OpenCode's plugin already installed."""
    install_config(opencode_config, nexus_env)
    running = start_agent(nexus_env)
    result = running.client.start()
    assert result.ok, result.message
    yield running
    running.client.close()
    running.stop()


def papermill(env: dict[str, str], name: str, out: Path, **parameters: Any) -> Verdict:
    """Run a runbook with the plain papermill command; return its recorded verdict."""
    argv = [
        sys.executable,
        "-m",
        "papermill",
        str(ROOT / "runbooks" / f"{name}.ipynb"),
        str(out),
        "--no-progress-bar",
    ]
    for key, value in parameters.items():
        argv += ["-p", key, str(value)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = find_verdict(nbformat.read(out, as_version=4))
    assert verdict is not None
    return verdict


def test_application_failure_reports_a_killed_server_then_brings_it_back(
    served: RunningAgent, tmp_path: Path
) -> None:
    env = served.env
    # Kill the agent's server twice in a row: with a restart limit of 1 it stays down.
    served.stop()
    env = {**env, "NEXUS_RESTART_LIMIT": "1"}
    served = start_agent(env)
    served.client.start()
    for _ in range(3):
        status = served.client.status()
        if status.state.value == "fatal":
            break
        if status.pid:
            os.kill(status.pid, signal.SIGKILL)
        time.sleep(1.0)
    wait_for(lambda: served.client.status().state.value == "fatal", timeout=60, what="fatal")

    report = papermill(env, "application_failure", tmp_path / "dry.ipynb")
    assert not report.healthy and report.dry_run
    assert "fatal" in report.summary
    exits = next(f for f in report.findings if f.check == "exits")
    assert not exits.ok and "exit" in exits.summary
    assert not any(a.done for a in report.actions)
    assert served.client.status().state.value == "fatal"  # a dry run changed nothing

    repaired = papermill(env, "application_failure", tmp_path / "fix.ipynb", dry_run=False)
    assert repaired.healthy, repaired.text()
    assert [a.done for a in repaired.actions] == [True]
    status = served.client.status()
    assert status.healthy and status.state.value == "running"
    served.client.close()
    served.stop()


def test_application_failure_restarts_agent_and_server_when_both_are_gone(
    served: RunningAgent, tmp_path: Path
) -> None:
    pid = served.client.status().pid
    served.stop()  # the agent goes, its server keeps running...
    os.kill(int(pid or 0), signal.SIGKILL)  # ...until it is killed too
    oc = OpenCode(served.env)
    wait_for(lambda: _refused(oc.url), what="the server to be gone")

    report = papermill(served.env, "application_failure", tmp_path / "dry.ipynb")
    assert not report.healthy
    assert "no agent" in report.summary
    assert _refused(oc.url)

    repaired = papermill(served.env, "application_failure", tmp_path / "fix.ipynb", dry_run=False)
    assert repaired.healthy, repaired.text()
    assert "the agent was started first" in repaired.actions[0].summary
    assert not _refused(oc.url)


def _refused(url: str) -> bool:
    try:
        httpx.get(url + "/global/health", timeout=1)
    except httpx.HTTPError:
        return True
    return False


@pytest.mark.parametrize("fault", ["corrupted", "deleted"])
def test_database_failure_restores_the_newest_good_backup(
    served: RunningAgent, tmp_path: Path, fault: str
) -> None:
    oc = OpenCode(served.env)
    held = {oc.new_session() for _ in range(3)}
    backup = served.client.create_backup()
    assert backup.sessions == 3
    later = oc.new_session()  # after the backup: lost by the restore, on purpose
    database = oc.data / "opencode.db"
    if fault == "corrupted":
        with database.open("r+b") as handle:
            handle.write(b"\0" * 100)
    else:
        database.unlink()

    report = papermill(served.env, "database_failure", tmp_path / "dry.ipynb")
    assert not report.healthy and not report.actions[0].done
    assert ("missing" if fault == "deleted" else "integrity_check") in report.summary

    started = time.monotonic()
    repaired = papermill(served.env, "database_failure", tmp_path / "fix.ipynb", dry_run=False)
    seconds = time.monotonic() - started
    assert repaired.healthy, repaired.text()
    assert oc.sessions() == held  # every session of the backup, through OpenCode's own API
    assert later not in oc.sessions()
    pre = [b for b in served.client.backups() if b.kind == "pre-restore"]
    assert len(pre) == 1
    print(f"database_failure ({fault}): healthy with sessions back in {seconds:.1f} s")


def test_database_failure_without_any_backup_says_so(served: RunningAgent, tmp_path: Path) -> None:
    oc = OpenCode(served.env)
    oc.new_session()
    (oc.data / "opencode.db").unlink()
    report = papermill(served.env, "database_failure", tmp_path / "fix.ipynb", dry_run=False)
    assert not report.healthy
    assert "cannot restore: there is no backup" in report.actions[0].summary


def _hold_port(port: int, folder: Path) -> int:
    """A foreign process listening on ``port``: not our child (init reaps it), like any
    other program an operator finds there. Returns its pid."""
    script = folder / "port_squatter.py"
    ready = folder / "squatter.ready"
    script.write_text(
        "import socket, time, pathlib\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('127.0.0.1', {port})); s.listen()\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(600)\n"
    )
    shell = subprocess.run(
        ["sh", "-c", f"setsid {sys.executable} {script} >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    wait_for(ready.exists, what="the squatter to listen")
    return int(shell.stdout.strip())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_network_failure_names_the_process_holding_the_port(
    served: RunningAgent, tmp_path: Path
) -> None:
    served.client.stop()
    port = int(served.env["NEXUS_OPENCODE_PORT"])
    squatter = _hold_port(port, tmp_path)
    try:
        report = papermill(served.env, "network_failure", tmp_path / "dry.ipynb", timeout=2.0)
        port_finding = next(f for f in report.findings if f.check == "port")
        assert not report.healthy and not port_finding.ok
        assert f"pid {squatter}" in port_finding.summary
        assert "port_squatter.py" in port_finding.summary

        # Not an OpenCode server: a repair without stop_holder leaves it alone.
        kept = papermill(
            served.env, "network_failure", tmp_path / "keep.ipynb", dry_run=False, timeout=2.0
        )
        assert not kept.healthy and _alive(squatter)
        assert "stop_holder=True" in kept.actions[0].summary

        # Through the agent's API this time, with the operator's consent to stop it.
        run = served.client.start_run(
            "network_failure", {"dry_run": False, "stop_holder": True, "timeout": 2.0}, who="test"
        )
        finished = served.client.wait_run(run.id, timeout=300)
        assert finished.status == "succeeded", finished.error
        assert finished.healthy, finished.verdict
        assert finished.who == "api:test"
        assert not _alive(squatter)
        assert served.client.status().healthy
        assert served.client.run_notebook(run.id)["cells"]
    finally:
        if _alive(squatter):
            os.kill(squatter, signal.SIGKILL)


def test_backup_and_restore_runbooks(served: RunningAgent, tmp_path: Path) -> None:
    oc = OpenCode(served.env)
    held = {oc.new_session() for _ in range(2)}
    dry = papermill(served.env, "backup", tmp_path / "dry.ipynb")
    assert not dry.healthy and served.client.backups() == []  # nothing made in a dry run
    made = papermill(served.env, "backup", tmp_path / "made.ipynb", dry_run=False)
    assert made.healthy, made.text()
    [info] = served.client.backups()
    assert info.sessions == 2

    target = tmp_path / "restored"
    restored = papermill(
        served.env, "restore", tmp_path / "restore.ipynb", dry_run=False, to_folder=str(target)
    )
    assert restored.healthy, restored.text()
    assert (target / "data" / "opencode.db").is_file()
    assert oc.sessions() >= held


def test_bad_parameters_are_refused_before_a_kernel_starts(served: RunningAgent) -> None:
    from nexus_ops.errors import AgentError

    with pytest.raises(AgentError) as caught:
        served.client.start_run("backup", {"dry_run": "no", "max_age": 3})
    assert caught.value.status == 400
    assert "unknown parameter 'max_age'" in caught.value.message
    assert "'dry_run' expects bool" in caught.value.message
    assert served.client.runs() == []


def test_agent_restore_route_uses_the_supervisor(served: RunningAgent) -> None:
    oc = OpenCode(served.env)
    held = {oc.new_session() for _ in range(2)}
    backup = served.client.create_backup()
    oc.new_session()
    report = served.client.restore_backup(backup.id, parts=["data"])
    assert report.ok, report.error
    assert oc.sessions() == held
    assert served.client.status().healthy
    metrics = served.client.metrics_text()
    assert "nexus_backup_last_success_timestamp_seconds" in metrics
    schedule = served.client.backup_schedule()
    assert schedule["schedule"] == "0 2 * * *" and schedule["next_run"] > time.time()
