"""The agent supervising the real OpenCode server, with faults injected."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import (
    RunningAgent,
    free_port,
    kill_everything_of,
    nexus_cli,
    private_env,
    start_agent,
    wait_for,
)

from nexus_ops.models import ProcessRecord, ServerState
from nexus_ops.paths import Layout
from nexus_ops.process import identify

pytestmark = pytest.mark.opencode


def started_server(agent: RunningAgent) -> int:
    result = agent.client.start()
    assert result.ok, result.message
    assert result.status.state is ServerState.RUNNING
    assert result.status.pid is not None
    return result.status.pid


def kinds(agent: RunningAgent) -> list[str]:
    return [e.kind for e in agent.client.events(limit=1000)]


def running_with_new_pid(agent: RunningAgent, old: int) -> int | None:
    status = agent.client.status()
    if status.state is ServerState.RUNNING and status.healthy and status.pid not in (None, old):
        return status.pid
    return None


def test_lifecycle_start_status_restart_stop(agent: RunningAgent) -> None:
    pid = started_server(agent)
    status = agent.client.status()
    assert status.version and status.version[0].isdigit()
    assert status.port == agent.settings.opencode_port
    assert agent.client.ready().ready
    assert psutil.Process(pid).is_running()

    restarted = agent.client.restart()
    assert restarted.ok and restarted.status.pid != pid
    assert restarted.status.restarts == status.restarts + 1
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    new_pid = restarted.status.pid
    stopped = agent.client.stop()
    assert stopped.ok and stopped.survivors == []
    assert stopped.status.state is ServerState.STOPPED and stopped.status.pid is None
    assert not psutil.pid_exists(new_pid)
    assert not agent.client.ready().ready
    with socket.socket() as sock:  # the port is free again (TIME_WAIT aside)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", agent.settings.opencode_port))
    assert {"start", "ready", "restart", "stop", "exit"} <= set(kinds(agent))


def test_kill_9_is_restarted_and_healthy(agent: RunningAgent) -> None:
    pid = started_server(agent)
    os.kill(pid, signal.SIGKILL)
    new_pid = wait_for(lambda: running_with_new_pid(agent, pid), 30, what="a new healthy server")
    events = agent.client.events(limit=100)
    exits = [e for e in events if e.kind == "exit" and e.pid == pid]
    assert exits and exits[0].reason == "crash" and exits[0].details["signal"] == 9
    assert any(e.kind == "restart" and e.reason == "crash" for e in events)
    assert agent.client.status().last_exit is not None
    assert psutil.Process(int(new_pid)).is_running()  # type: ignore[call-overload]


def test_sigstop_is_declared_hung_and_restarted(agent: RunningAgent) -> None:
    pid = started_server(agent)
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: running_with_new_pid(agent, pid), 40, what="the hung server replaced")
    events = agent.client.events(limit=100)
    hung = [e for e in events if e.kind == "hung"]
    assert hung and hung[0].pid == pid and hung[0].reason == "hang"
    assert not psutil.pid_exists(pid), "the stopped server must not be left behind"


def test_readiness_drops_at_the_first_late_probe_liveness_waits(
    nexus_env: dict[str, str],
) -> None:
    """SIGSTOP: /ready says 503 (naming the late probe) before any probe has failed, and
    the server is restarted only after NEXUS_PROBE_FAILURES failed probes, so a pause
    shorter than that costs readiness, not the server."""
    nexus_env.update(NEXUS_PROBE_TIMEOUT="3", NEXUS_PROBE_FAILURES="3")
    running = start_agent(nexus_env)
    try:
        pid = started_server(running)
        os.kill(pid, signal.SIGSTOP)
        seen = wait_for(
            lambda: (r := running.client.ready()) and not r.ready and r,
            20,
            what="/ready to drop after SIGSTOP",
        )
        assert seen.detail == "no answer to the probe within 0.5 s"  # type: ignore[attr-defined]
        assert seen.state is ServerState.RUNNING  # type: ignore[attr-defined]
        assert not [e for e in running.client.events(limit=1000) if e.kind == "hung"]
        os.kill(pid, signal.SIGCONT)
        wait_for(lambda: running.client.ready().ready, 20, what="ready again after SIGCONT")
        assert running.client.status().pid == pid
        assert not {"hung", "restart", "exit"} & set(kinds(running))
    finally:
        running.client.close()
        running.stop()


def test_crash_loop_backs_off_then_goes_fatal(nexus_env: dict[str, str], tmp_path: Path) -> None:
    crasher = tmp_path / "crasher.sh"
    crasher.write_text("#!/bin/sh\necho 'boom: cannot start' >&2\nexit 3\n")
    crasher.chmod(0o755)
    nexus_env.update(NEXUS_OPENCODE_BIN=str(crasher), NEXUS_RESTART_LIMIT="4")
    running = start_agent(nexus_env)
    try:
        result = running.client.start(wait=False)
        assert result.status.state in (ServerState.STARTING, ServerState.BACKOFF)
        wait_for(lambda: running.client.status().state is ServerState.FATAL, 40, what="fatal")
        events = running.client.events(limit=1000)
        starts = [e.time for e in events if e.kind == "start"]
        assert len(starts) == 4 + 1  # the operator's start and the limit of restarts
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps[-1] > gaps[0], f"backoff must grow: {gaps}"
        assert any(e.kind == "fatal" for e in events)
        exits = [e for e in events if e.kind == "exit"]
        assert exits[0].details["code"] == 3
        time.sleep(2.0)  # fatal: no more tries
        assert len([e for e in running.client.events(limit=1000) if e.kind == "start"]) == 5
        assert not running.client.ready().ready
        log = "\n".join(running.client.logs(50))
        assert "boom: cannot start" in log
    finally:
        running.client.close()
        running.stop()


def test_killed_agent_leaves_server_and_new_agent_adopts(agent: RunningAgent) -> None:
    pid = started_server(agent)
    starts_before = kinds(agent).count("start")
    agent.stop(signal.SIGKILL)
    time.sleep(0.5)
    assert psutil.Process(pid).is_running(), "the server must outlive its agent"
    second = start_agent(agent.env)
    try:
        status = wait_for(lambda: second.client.ready().ready and second.client.status(), 20)
        assert status.pid == pid  # type: ignore[attr-defined]
        all_kinds = kinds(second)
        assert all_kinds.count("start") == starts_before, "adoption must not restart"
        assert "adopt" in all_kinds
    finally:
        second.client.close()
        second.stop()
    assert psutil.Process(pid).is_running(), "stopping the agent leaves the server running"


@pytest.mark.parametrize("ours", [True, False], ids=["same-password", "other-password"])
def test_a_server_left_without_a_pidfile_is_adopted_only_with_this_install_password(
    agent: RunningAgent, ours: bool
) -> None:
    """An agent killed between starting the server and writing its pidfile."""
    pid = started_server(agent)
    agent.stop(signal.SIGKILL)
    Layout(agent.settings.home).server_pidfile.unlink()
    if not ours:  # the server on the port then holds someone else's password
        Layout(agent.settings.home).server_password_file.write_text("another-install-password\n")
    second = start_agent(agent.env)
    try:
        if ours:
            status = wait_for(lambda: second.client.ready().ready and second.client.status(), 20)
            assert status.pid == pid  # type: ignore[attr-defined]
            adopted = [e for e in second.client.events() if e.kind == "adopt"]
            assert adopted and "no pidfile" in adopted[0].message and adopted[0].pid == pid
        else:
            wait_for(lambda: "crash" in kinds(second) or "start_failed" in kinds(second), 30)
            assert "adopt" not in kinds(second)
            assert second.client.status().pid != pid
            assert f"port {agent.settings.opencode_port}" in (
                second.client.status().last_error or ""
            )
        assert psutil.Process(pid).is_running(), "a server found on the port is never signalled"
    finally:
        second.client.close()
        second.stop()
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def test_stale_pidfile_with_reused_pid_is_never_signalled(nexus_env: dict[str, str]) -> None:
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        record = {"pid": bystander.pid, "create_time": 1000.0, "cmdline": ["opencode", "serve"]}
        pidfile = Path(nexus_env["NEXUS_HOME"]) / "opencode.pid"
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(__import__("json").dumps(record))
        running = start_agent(nexus_env)
        try:
            events = running.client.events()
            stale = [e for e in events if e.kind == "stale_pidfile"]
            assert stale and stale[0].pid == bystander.pid
            assert running.client.status().pid is None
        finally:
            running.client.close()
            running.stop()
        assert bystander.poll() is None, "a reused pid must never be signalled"
        assert not pidfile.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_port_taken_is_a_clear_error(agent: RunningAgent) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", agent.settings.opencode_port))
        holder.listen()
        done = nexus_cli(agent.env, "server", "start")
        assert done.returncode == 1
        assert f"port {agent.settings.opencode_port}" in done.stderr
        assert f"pid {os.getpid()}" in done.stderr, done.stderr  # names the holder
        assert "NEXUS_OPENCODE_PORT" in done.stderr
        assert "Traceback" not in done.stderr
        assert agent.client.status().state is ServerState.STOPPED


def test_desired_stop_survives_an_agent_restart(agent: RunningAgent) -> None:
    started_server(agent)
    agent.client.stop()
    agent.stop()
    second = start_agent(agent.env)
    try:
        time.sleep(1.5)
        status = second.client.status()
        assert status.state is ServerState.STOPPED and status.desired == "stopped"
    finally:
        second.client.close()
        second.stop()


def test_memory_limit_restarts_the_server(nexus_env: dict[str, str]) -> None:
    nexus_env.update(NEXUS_MEMORY_LIMIT_MB="64", NEXUS_MEMORY_LIMIT_DURATION="2")
    running = start_agent(nexus_env)
    try:
        pid = started_server(running)
        wait_for(lambda: any(e.kind == "memory_limit" for e in running.client.events()), 30)
        event = next(e for e in running.client.events() if e.kind == "memory_limit")
        assert event.pid == pid and "MiB" in event.message
        wait_for(lambda: running_with_new_pid(running, pid), 30, what="restart after memory")
    finally:
        running.client.close()
        running.stop()


def test_server_log_is_rotated_by_size(nexus_env: dict[str, str]) -> None:
    nexus_env.update(NEXUS_LOG_MAX_BYTES="1024", NEXUS_LOG_BACKUPS="2")
    running = start_agent(nexus_env)
    try:
        started_server(running)
        logs = Path(nexus_env["NEXUS_HOME"]) / "logs"
        wait_for(lambda: (logs / "opencode.log.1").exists(), 20, what="a rotated log")
        assert "opencode server listening" in (logs / "opencode.log.1").read_text()
        assert not (logs / "opencode.log.3").exists()
    finally:
        running.client.close()
        running.stop()


def test_agent_daemon_start_and_stop_leave_server_running(
    tmp_path: Path, opencode_bin: Path
) -> None:
    env = private_env(tmp_path, {"NEXUS_OPENCODE_BIN": str(opencode_bin)})
    try:
        started = nexus_cli(env, "agent", "start")
        assert started.returncode == 0, started.stderr
        status = nexus_cli(env, "server", "start")
        assert status.returncode == 0, status.stderr
        assert "state running" in status.stdout
        as_json = nexus_cli(env, "server", "status", "--json")
        body = __import__("json").loads(as_json.stdout)
        assert {
            "state",
            "pid",
            "version",
            "port",
            "uptime_seconds",
            "restarts",
            "last_exit",
        } <= set(body)
        stopped = nexus_cli(env, "agent", "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert psutil.Process(body["pid"]).is_running()
        assert nexus_cli(env, "agent", "status").returncode == 3
    finally:
        kill_everything_of(env)


def test_back_to_back_restarts_each_become_ready(nexus_env: dict[str, str]) -> None:
    """Probes run while a restart stops the old server: a probe that sees the old
    process go must not take the new one for it (nor wait on it)."""
    nexus_env["NEXUS_PROBE_INTERVAL"] = "0.05"
    agent = start_agent(nexus_env)
    try:
        pid = started_server(agent)
        for _ in range(6):
            restarted = agent.client.restart()
            assert restarted.ok, restarted.message
            assert restarted.status.state is ServerState.RUNNING
            assert restarted.status.pid != pid
            pid = restarted.status.pid
        assert agent.client.status().pid == pid and agent.client.ready().ready
    finally:
        agent.client.close()
        agent.stop()


def exec_wrapper(folder: Path, binary: Path, before: str = "") -> Path:
    """A shell script that ``exec``s the real binary, as people write for PATH or env setup."""
    wrapper = folder / "opencode-wrapper.sh"
    wrapper.write_text(f'#!/bin/sh\n{before}exec {binary} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_wrapper_script_that_execs_the_binary_is_supervised_and_adopted(
    nexus_env: dict[str, str], tmp_path: Path, opencode_bin: Path
) -> None:
    """The wrapper also leaves a stubborn process in the group, outside the server's tree:
    `agent stop --stop-server` stops it too."""
    orphan_pid = tmp_path / "orphan.pid"
    orphan = f"(trap '' TERM; sleep 300 & echo $! > {orphan_pid})\n"
    nexus_env["NEXUS_OPENCODE_BIN"] = str(exec_wrapper(tmp_path, opencode_bin, before=orphan))
    nexus_env["NEXUS_STOP_GRACE"] = "4"  # the server exits within it; the stray does not
    first = start_agent(nexus_env)
    pid = started_server(first)
    assert Path(psutil.Process(pid).exe()) == opencode_bin.resolve()  # exec has happened
    status = first.client.status()
    assert status.rss_bytes and status.rss_bytes > 0
    assert wait_for(lambda: "opencode_process_resident_memory_bytes" in first.client.metrics_text())
    first.client.close()
    first.stop(signal.SIGKILL)
    second = start_agent(nexus_env)
    try:
        adopted = wait_for(lambda: second.client.ready().ready and second.client.status(), 20)
        assert adopted.pid == pid  # type: ignore[attr-defined]
        assert "adopt" in kinds(second)
        stray = int(orphan_pid.read_text())
        assert os.getpgid(stray) == pid and psutil.Process(stray).ppid() != pid  # not its child
        stopped = nexus_cli(nexus_env, "agent", "stop", "--stop-server")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "stopped" in stopped.stdout and "survivors" not in stopped.stdout
        for gone in (pid, stray):
            assert (
                not psutil.pid_exists(gone) or psutil.Process(gone).status() == psutil.STATUS_ZOMBIE
            )
        second.proc.wait(timeout=20)
    finally:
        second.client.close()
        second.stop()
        if orphan_pid.exists():  # left behind when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(orphan_pid.read_text()), signal.SIGKILL)


def forged_pidfile(env: dict[str, str], record: ProcessRecord) -> Path:
    pidfile = Path(env["NEXUS_HOME"]) / "opencode.pid"
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(record.model_dump_json())
    return pidfile


def test_forged_pidfile_of_a_live_process_is_not_adopted_nor_signalled(
    nexus_env: dict[str, str],
) -> None:
    """The real pid, create time, group and command line of a process that is not
    `opencode serve` on the port: a group leader, then pid 1 (whose group reads 0)."""
    nexus_env.update(NEXUS_PROBE_INTERVAL="0.1", NEXUS_PROBE_FAILURES="2")
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        for record in (identify(bystander.pid), identify(1)):
            pidfile = forged_pidfile(nexus_env, record)
            nexus_env["NEXUS_AGENT_PORT"] = str(free_port())
            running = start_agent(nexus_env)
            try:
                events = running.client.events()
                stale = [e for e in events if e.kind == "stale_pidfile" and e.pid == record.pid]
                assert stale, [e.kind for e in events]
                assert "not adopted" in stale[0].message
                assert "adopt" not in kinds(running)
                assert running.client.status().pid is None
                time.sleep(0.5)  # several probe intervals: nothing is declared hung
                assert "hung" not in kinds(running) and running.proc.poll() is None
            finally:
                running.client.close()
                running.stop()
            assert not pidfile.exists()
        assert bystander.poll() is None, "a forged pidfile's process must never be signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_what_a_crashing_binary_forked_is_stopped_on_each_exit(
    nexus_env: dict[str, str], tmp_path: Path
) -> None:
    children = tmp_path / "children"
    forker = tmp_path / "forker.sh"
    forker.write_text(f"#!/bin/sh\nsleep 300 &\necho $! >> {children}\nexit 3\n")
    forker.chmod(0o755)
    nexus_env.update(NEXUS_OPENCODE_BIN=str(forker), NEXUS_RESTART_LIMIT="1")
    running = start_agent(nexus_env)
    try:
        running.client.start(wait=False)
        wait_for(lambda: running.client.status().state is ServerState.FATAL, 40, what="fatal")
        pids = [int(p) for p in children.read_text().split()]
        assert len(pids) == 2  # the start and one restart
        for pid in pids:
            wait_for(lambda p=pid: not psutil.pid_exists(p) or  # type: ignore[misc]
                     psutil.Process(p).status() == psutil.STATUS_ZOMBIE, 10, what=f"{pid} gone")  # fmt: skip
    finally:
        running.client.close()
        running.stop()


def test_a_fresh_server_passes_the_file_mode_checks(opencode_bin: Path) -> None:
    """In a folder every user may pass through, so that a 0644 file would be exposed."""
    root = Path(tempfile.mkdtemp(prefix="nxops-modes-"))
    root.chmod(0o755)
    env = private_env(root, {"NEXUS_OPENCODE_BIN": str(opencode_bin)})
    Path(env["NEXUS_HOME"]).chmod(0o700)  # as the agent makes it when it is not there
    data = Path(env["XDG_DATA_HOME"]) / "opencode"
    data.mkdir(mode=0o755)
    (data / "auth.json").write_text("{}")  # left 0644 by an earlier, unprotected run
    (data / "auth.json").chmod(0o644)
    try:
        running = start_agent(env)
        try:
            started_server(running)
            wait_for(lambda: list((data / "log").iterdir()) and (data / "opencode.db-wal").exists(),
                     20, what="OpenCode's database, WAL and log")  # fmt: skip
        finally:
            running.client.close()
            running.stop()
        report = json.loads(nexus_cli(env, "security", "check", "--json").stdout)
        items = {item["name"]: item for item in report["items"]}
        for name in ("data permissions", "secret files"):
            assert items[name]["status"] == "pass", items[name]
        assert stat.S_IMODE((data / "auth.json").stat().st_mode) == 0o600
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        created = [data / "opencode.db", data / "opencode.db-wal", *(data / "log").iterdir()]
        assert [f for f in created if stat.S_IMODE(f.stat().st_mode) & 0o077] == []  # umask 077
    finally:
        kill_everything_of(env)
        shutil.rmtree(root, ignore_errors=True)


def servers_on(port: int) -> list[int]:
    """Pids of every `opencode serve` on ``port`` (the agent's and any orphan)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "serve" in cmd and str(port) in cmd:
            found.append(proc.info["pid"])
    return found


def test_a_storm_of_concurrent_actions_ends_consistent(agent: RunningAgent) -> None:
    """50 starts, stops and restarts at once: no 500, one server or none, as desired."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    token = (agent.settings.home / "secrets" / "agent.token").read_text().strip()
    base = f"{agent.client.base_url}/api/v1/server"
    actions = list(itertools.islice(itertools.cycle(["start", "restart", "stop"]), 50))
    actions = actions[1::2] + actions[::2]  # mixed, not in turns

    def act(action: str) -> int:
        query = "" if action == "stop" else "?wait=false"
        answer = httpx.post(
            f"{base}/{action}{query}", headers={"Authorization": f"Bearer {token}"}, timeout=300
        )
        return answer.status_code

    with ThreadPoolExecutor(max_workers=len(actions)) as pool:
        codes = list(pool.map(act, actions))
    assert set(codes) == {200}, codes
    port = agent.settings.opencode_port
    status = agent.client.status()
    if status.desired == "running":
        wait_for(lambda: agent.client.status().healthy, what="the server to be healthy")
        status = agent.client.status()
        assert status.state is ServerState.RUNNING
        assert servers_on(port) == [status.pid]
    else:
        assert status.state is ServerState.STOPPED and status.pid is None
        assert servers_on(port) == []
    last = [e for e in agent.client.events(limit=1000) if e.kind in ("start", "stop")][-1]
    assert last.kind == ("start" if status.desired == "running" else "stop")


def fill_journal(env: dict[str, str], events: int) -> None:
    """A long synthetic history: what makes ``/api/v1/events`` an expensive route."""
    from nexus_ops.paths import Layout
    from nexus_ops.store import Database, Journal

    db = Database(Layout(Path(env["NEXUS_HOME"])).ensure().database)
    Journal(db)  # its schema
    rows = [(time.time(), "note", None, "x" * 200, None, "{}") for _ in range(events)]
    db.executemany(
        "INSERT INTO events (time, kind, reason, message, pid, details) VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.close()


def probes_counted(agent: RunningAgent) -> float:
    """How many health probes the agent has sent (its own request histogram)."""
    text = agent.client.metrics_text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("opencode_request_duration_seconds_count") and "/global/health" in line
    )


def flood(agent: RunningAgent, stop: threading.Event, workers: int = 6) -> list[threading.Thread]:
    """Keep the agent's main loop busy: long journal reads, back to back, from many clients."""
    import httpx

    token = (agent.settings.home / "secrets" / "agent.token").read_text().strip()
    url = f"{agent.client.base_url}/api/v1/events?limit=10000"

    def hammer() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            while not stop.is_set():
                http.get(url)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    return threads


def test_probes_and_restarts_keep_their_pace_while_the_api_is_flooded(
    nexus_env: dict[str, str],
) -> None:
    fill_journal(nexus_env, 30000)
    nexus_env.update(NEXUS_PROBE_INTERVAL="0.2", NEXUS_PROBE_FAILURES="2")
    agent = start_agent(nexus_env)
    stop = threading.Event()
    try:
        pid = started_server(agent)
        wait_for(lambda: probes_counted(agent), what="a first probe")
        flood(agent, stop)
        before, started = probes_counted(agent), time.monotonic()
        time.sleep(4.0)  # a window of supervising under load (no assertion on time)
        probes = probes_counted(agent) - before
        expected = (time.monotonic() - started) / 0.2
        assert probes >= expected * 0.6, (probes, expected)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: running_with_new_pid(agent, pid), timeout=60, what="a restart")
        assert "hung" not in kinds(agent)
    finally:
        stop.set()
        agent.client.close()
        agent.stop()
