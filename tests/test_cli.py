"""The `nexus-ops` command against a real agent and server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import (
    RunningAgent,
    free_port,
    kill_everything_of,
    nexus_cli,
    private_env,
    wait_for,
)

from nexus_ops.cli import describe_uptime
from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.daemon import answers, running_agent
from nexus_ops.models import ServerState, ServerStatus
from nexus_ops.paths import Layout


def is_contiguous_slice(part: list[str], whole: list[str]) -> bool:
    return any(whole[i : i + len(part)] == part for i in range(len(whole) - len(part) + 1))


def test_logs_follow_prints_each_line_once(agent: RunningAgent, tmp_path: Path) -> None:
    assert agent.client.start().ok
    log = Layout(agent.settings.home).server_log
    wait_for(lambda: len(log.read_text().splitlines()) >= 5, what="a few lines in the log")
    out = tmp_path / "follow.out"
    with out.open("w") as sink:
        follower = subprocess.Popen(
            [sys.executable, "-m", "nexus_ops", "server", "logs", "-f", "-n", "3"],
            env=agent.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: len(out.read_text().splitlines()) >= 3, what="the last 3 lines")
        with log.open("a") as server_log:  # the server appends the same way (O_APPEND)
            server_log.write("marker one\n")
        wait_for(lambda: "marker one" in out.read_text(), what="a new line")
        with log.open("a") as server_log:
            server_log.write("marker two\n")
        wait_for(lambda: "marker two" in out.read_text(), what="a second new line")
    finally:
        follower.terminate()
        follower.wait(timeout=20)
    printed = out.read_text().splitlines()
    assert printed.count("marker one") == 1 and printed.count("marker two") == 1
    assert is_contiguous_slice(printed, log.read_text().splitlines()), printed


READ_ONLY_NEEDING_AGENT = [
    ["server", "status"],
    ["server", "logs", "-n", "5"],
    ["events"],
    ["alerts", "list"],
    ["server", "stop"],
]
READ_ONLY_LOCAL = [["config", "show"], ["backup", "list"], ["runbook", "runs"]]


def test_only_commands_that_act_start_an_agent(nexus_env: dict[str, str]) -> None:
    settings = load_settings(nexus_env)
    for command in READ_ONLY_NEEDING_AGENT:
        done = nexus_cli(nexus_env, *command)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "no agent answers" in done.stderr and "`nexus-ops agent start`" in done.stderr
        assert "Traceback" not in done.stderr
    for command in READ_ONLY_LOCAL:
        assert nexus_cli(nexus_env, *command).returncode == 0, command
    assert running_agent(settings) is None and not answers(settings)

    started = nexus_cli(nexus_env, "server", "start")
    assert started.returncode == 0, started.stderr
    assert "agent started: pid" in started.stderr
    assert "uptime -" not in started.stdout
    assert nexus_cli(nexus_env, "server", "stop").returncode == 0
    stopped = nexus_cli(nexus_env, "server", "status")
    assert stopped.returncode == 0 and "state stopped" in stopped.stdout
    assert "uptime -," in stopped.stdout, stopped.stdout


def test_uptime_is_shown_only_for_a_live_server() -> None:
    stopped = ServerStatus(state=ServerState.STOPPED, desired="stopped", port=4096)
    assert describe_uptime(stopped) == "-"
    running = ServerStatus(
        state=ServerState.RUNNING, desired="running", port=4096, pid=7, uptime_seconds=12.4
    )
    assert describe_uptime(running) == "12s"


def test_agent_start_gives_the_agent_the_settings_of_the_working_dir(
    tmp_path: Path, opencode_bin: Path
) -> None:
    work = tmp_path / "project"
    work.mkdir()
    env = {k: v for k, v in private_env(tmp_path / "root").items() if not k.startswith("NEXUS_")}
    agent_port, server_port = free_port(), free_port()
    (work / ".env").write_text(
        f"NEXUS_ENV=staging\nNEXUS_HOME=nexus-data\nNEXUS_AGENT_PORT={agent_port}\n"
        f"NEXUS_OPENCODE_BIN={opencode_bin}\n"
    )
    (work / ".env.staging").write_text(
        f"NEXUS_OPENCODE_PORT={server_port}\nNEXUS_PROBE_FAILURES=7\n"
    )
    home = work / "nexus-data"
    cleanup = {
        "NEXUS_HOME": str(home),
        "NEXUS_OPENCODE_PORT": str(server_port),
        "NEXUS_AGENT_PORT": str(agent_port),
    }
    try:
        started = nexus_cli(env, "agent", "start", cwd=work, timeout=60)
        assert started.returncode == 0, started.stderr
        assert f"127.0.0.1:{agent_port}" in started.stdout
        assert Layout(home).agent_pidfile.exists()
        settings = load_settings({}, directory=work)
        with AgentClient.from_settings(settings) as client:
            shown = {row["variable"]: row["value"] for row in client.config()["settings"]}
        assert shown["NEXUS_HOME"] == str(home)
        assert shown["NEXUS_ENV"] == "staging" and shown["NEXUS_PROBE_FAILURES"] == "7"
        assert shown["NEXUS_OPENCODE_PORT"] == str(server_port)
        status = nexus_cli(env, "agent", "status", cwd=work)
        assert status.returncode == 0 and "agent running" in status.stdout
        assert nexus_cli(env, "agent", "stop", cwd=work).returncode == 0
    finally:
        kill_everything_of(cleanup)
