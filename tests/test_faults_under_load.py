"""Faults while OpenCode sessions work: the real OpenCode, the real agent, the scripted
model provider, and the workload driver keeping sessions busy.

One agent and one server serve the whole module (``stage_helpers.open_stage``); the
tests run in the order of the file, the no-fault ones first, the ones that break the
server or the agent last.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import start_agent, wait_for
from stage_helpers import (
    DRAIN,
    LONG,
    Stage,
    busy_agent,
    event_ids,
    events_of,
    messages_of,
    new_healthy_pid,
    sleep_script,
    stage_fixture,
)

from nexus_ops.models import ServerState
from nexus_ops.workload.driver import run_workload
from nexus_ops.workload.script import Reply
from nexus_ops.workload.steady import SteadyWorkload

pytestmark = pytest.mark.opencode

SHORT = "sleep four"
SCRIPT = sleep_script(SHORT, 4, Reply(tokens=20, tokens_per_second=80.0))
# A hang is declared after 3 probes of 1 s: the sessions of this module keep the
# server's event loop free (their work is a tool's `sleep`).
FAST_HANG = {"NEXUS_PROBE_TIMEOUT": "1", "NEXUS_PROBE_FAILURES": "3"}


stage = stage_fixture("faults", SCRIPT)


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def prompt(stage: Stage, session: str, text: str) -> dict[str, Any]:
    """Send ``text`` and wait for the assistant's answer, as a client does."""
    body = {"parts": [{"type": "text", "text": text}]}
    sent = stage.opencode("POST", f"/session/{session}/message", body, timeout=90)
    assert sent.status_code == 200, sent.text
    return dict(sent.json())


def ask(stage: Stage, session: str, text: str) -> dict[str, Any]:
    """Send ``text`` and poll for the assistant's answer: no request is held open while
    a server just started works on its first prompt."""
    count = len(messages_of(stage, session))
    body = {"parts": [{"type": "text", "text": text}]}
    sent = stage.opencode("POST", f"/session/{session}/prompt_async", body)
    assert sent.status_code == 204, sent.text

    def answer() -> dict[str, Any] | None:
        messages = messages_of(stage, session)
        last = messages[-1] if len(messages) >= count + 2 else None
        return last if last is not None and answered(last) else None

    found = wait_for(answer, 60, 0.2, what=f"the answer to {text!r} in {session}")
    assert isinstance(found, dict)
    return found


def new_session(stage: Stage) -> str:
    return str(stage.opencode("POST", "/session", {}).json()["id"])


def answered(reply: dict[str, Any]) -> bool:
    """The answer is an assistant message that completed without error."""
    info = reply["info"]
    done = info["time"].get("completed")
    return bool(info["role"] == "assistant" and not info.get("error") and done)


def busy_answer(
    stage: Stage, pool: ThreadPoolExecutor, text: str
) -> tuple[str, Future[dict[str, Any]]]:
    """A new session sent ``text`` from a thread; returned once the agent sees it busy."""
    session = new_session(stage)
    reply = pool.submit(prompt, stage, session, text)
    wait_for(
        lambda: session in stage.agent.client.status().busy_sessions,
        60,
        what=f"the agent to see session {session} busy",
    )
    return session, reply


def message_ids(stage: Stage) -> set[str]:
    """Every message of every session, through OpenCode's own API."""
    found = set()
    for session in stage.opencode("GET", "/session").json():
        for message in stage.opencode("GET", f"/session/{session['id']}/message").json():
            found.add(str(message["info"]["id"]))
    return found


def test_a_backup_under_load_holds_every_message_committed_before_it(
    stage: Stage, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    agent = stage.with_settings(**DRAIN)
    load = pool.submit(
        run_workload, stage.base_url, stage.credentials, 4, ["write a line"] * 12, 60.0
    )
    wait_for(lambda: len(message_ids(stage)) >= 16, 60, what="the sessions to write messages")
    committed = message_ids(stage)
    manifest = agent.client.create_backup()
    assert not load.done(), "the backup must be taken while the sessions write"
    report = agent.client.verify_backup(manifest.id)
    assert report.ok, report.problems
    result = load.result(timeout=120)
    assert not result.errors, result.errors[:3]
    assert len(message_ids(stage)) > len(committed)

    restored = tmp_path / "restored"
    agent.client.restore_backup(manifest.id, parts=["data"], to_folder=str(restored))
    database = restored / "data" / "opencode.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        kept = {row[0] for row in conn.execute("SELECT id FROM message")}
    assert committed <= kept, f"missing from the backup: {sorted(committed - kept)[:5]}"


def test_a_live_restore_waits_for_the_busy_prompt_then_restores(
    stage: Stage, pool: ThreadPoolExecutor
) -> None:
    agent = stage.with_settings(**DRAIN)
    backup = agent.client.create_backup()
    pid = agent.client.status().pid
    before = event_ids(agent)
    session, reply = busy_answer(stage, pool, f"please {SHORT}")

    restore = pool.submit(agent.client.restore_backup, backup.id)
    pending = wait_for(lambda: agent.client.status().pending_restart, 20, what="the waiting stop")
    assert pending.reason == "restore" and pending.sessions == [session]  # type: ignore[attr-defined]
    assert agent.client.status().pid == pid, "the server is not stopped under a busy session"

    answer = reply.result(timeout=60)
    assert answered(answer), answer["info"]
    report = restore.result(timeout=120)
    assert report.ok, report.error
    [waiting] = events_of(agent, "restart_waiting", before)
    assert waiting.reason == "restore" and waiting.details["sessions"] == [session]
    assert waiting.details["stop"] is True
    [drained] = events_of(agent, "restart_drained", before)
    assert answer["info"]["time"]["completed"] / 1000 <= drained.time
    assert not events_of(agent, "prompt_cut", before)
    [exit_] = events_of(agent, "exit", before)
    assert exit_.pid == pid and exit_.reason == "restore"
    wait_for(lambda: new_healthy_pid(agent, pid or 0), 30, what="the restored server")


def test_a_live_restore_past_the_drain_limit_cuts_and_records_the_prompt(
    stage: Stage, pool: ThreadPoolExecutor
) -> None:
    agent, pid, before, session = busy_agent(stage, f"please {LONG}", NEXUS_DRAIN_TIMEOUT="2")
    backup = agent.client.create_backup()
    report = agent.client.restore_backup(backup.id)
    assert report.ok, report.error
    [timeout] = events_of(agent, "drain_timeout", before)
    assert timeout.reason == "restore" and timeout.details["sessions"] == [session]
    assert "stopping anyway" in timeout.message
    [cut] = events_of(agent, "prompt_cut", before)
    assert cut.details["session"] == session and cut.pid == pid and cut.reason == "restore"
    assert agent.client.status().healthy


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_start_right_after_a_stop_waits_for_the_port_to_be_let_go(stage: Stage) -> None:
    """A restore starts the server right after it stopped it: a port still held for a
    moment (by the last threads of the old server) is waited for, not a failed start."""
    agent = stage.with_settings(**DRAIN)
    assert agent.client.stop().ok
    port = int(stage.env["NEXUS_OPENCODE_PORT"])
    # A tool process of a prompt cut earlier (a `sleep` the bash tool ran) may still
    # hold the old server's socket: this test holds the port itself once it is free.
    wait_for(lambda: port_is_free(port), 90, what=f"port {port} let go")
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    release = threading.Timer(1.0, holder.close)
    release.start()
    try:
        result = agent.client.start()
    finally:
        release.cancel()
        holder.close()
    assert result.ok and result.status.healthy, result.message


def test_a_killed_agent_leaves_the_busy_prompt_running_and_is_adopted(
    stage: Stage, pool: ThreadPoolExecutor
) -> None:
    agent = stage.with_settings(**DRAIN)
    pid = agent.client.status().pid
    assert pid is not None
    before = event_ids(agent)
    session, reply = busy_answer(stage, pool, f"please {SHORT}")
    agent.client.close()
    agent.stop(signal.SIGKILL)

    assert stage.opencode("GET", "/global/health").json()["healthy"], "the server keeps serving"
    answer = reply.result(timeout=60)
    assert answered(answer), answer["info"]
    assert psutil.Process(pid).is_running()

    stage.agent = start_agent(agent.env)
    wait_for(lambda: stage.agent.client.status().healthy, 30, what="the adopted server")
    status = stage.agent.client.status()
    assert status.pid == pid and status.state is ServerState.RUNNING
    [adopt] = events_of(stage.agent, "adopt", before)
    assert adopt.pid == pid
    for kind in ("start", "stop", "exit", "restart", "prompt_cut"):
        assert not events_of(stage.agent, kind, before), f"a {kind} after the agent was killed"
    assert answered(ask(stage, session, "and now?"))


def test_sigstop_under_a_busy_prompt_restarts_at_once_and_records_the_cut(
    stage: Stage,
) -> None:
    agent, pid, before, session = busy_agent(stage, f"please {LONG}", **DRAIN, **FAST_HANG)
    old = new_session(stage)
    assert answered(ask(stage, old, "hello before"))
    os.kill(pid, signal.SIGSTOP)

    wait_for(lambda: new_healthy_pid(agent, pid), 60, what="the hung server replaced")
    [hung] = events_of(agent, "hung", before)
    assert hung.pid == pid and hung.reason == "hang"
    [cut] = events_of(agent, "prompt_cut", before)
    assert cut.details["session"] == session and cut.pid == pid and cut.reason == "hang"
    assert not events_of(agent, "restart_waiting", before), "a hang never waits for sessions"
    [start] = events_of(agent, "start", before)
    assert start.time - hung.time < 10, "restarted at once, not after the drain limit (30 s)"
    assert gone(pid), "the stopped server must not be left behind"

    for text, target in (("hello again", session), ("hello old", old)):
        assert answered(ask(stage, target, text)), f"{target} after the restart"
    assert answered(ask(stage, new_session(stage), "hello new"))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


CRASHES = 5
INITIAL, CAP = 0.25, 2.0  # the fifth restart's delay is capped: 0.25 * 2**4 = 4 > 2
LOOP = {
    **DRAIN,
    **FAST_HANG,
    "NEXUS_BACKOFF_INITIAL": str(INITIAL),
    "NEXUS_BACKOFF_MAX": str(CAP),
    "NEXUS_RESTART_LIMIT": "10",
}


def next_server(stage: Stage, killed: list[int]) -> int | None:
    pid = stage.agent.client.status().pid
    return None if pid in (None, *killed) else pid


def kill_each_new_server(stage: Stage, first: int, times: int) -> list[int]:
    """kill -9 the server each time a new one comes up, ``times`` times; their pids."""
    killed, current = [], first
    for _ in range(times):
        os.kill(current, signal.SIGKILL)
        killed.append(current)
        found = wait_for(lambda: next_server(stage, killed), 30, 0.05, what="the next server")
        assert isinstance(found, int)
        current = found
    return killed


def test_a_crash_loop_under_load_backs_off_then_settles(stage: Stage) -> None:
    agent = stage.with_settings(**LOOP)
    pid = agent.client.status().pid
    assert pid is not None
    before = event_ids(agent)
    steady = SteadyWorkload(
        stage.base_url, stage.credentials, sessions=2, interval=0.3, prompts=["go"], timeout=10
    ).start()
    try:
        wait_for(lambda: steady.counts.prompts >= 4, 30, what="the workload to run")
        killed = kill_each_new_server(stage, pid, CRASHES)
        wait_for(lambda: agent.client.status().healthy, 30, what="the server to settle")
        settled = steady.counts.prompts - steady.counts.errors
        wait_for(
            lambda: steady.counts.prompts - steady.counts.errors >= settled + 4,
            30,
            what="the workload's prompts to complete again",
        )
    finally:
        steady.stop()

    events = [e for e in agent.client.events(limit=1000) if e.id not in before]
    ids = sorted(e.id for e in events)
    assert ids == list(range(ids[0], ids[-1] + 1)), "the journal lost events"
    exits = [e for e in events if e.kind == "exit"]
    starts = [e for e in events if e.kind == "start"]
    assert [e.pid for e in exits] == killed and all(e.reason == "crash" for e in exits)
    assert len(starts) == CRASHES, f"one restart a crash, no storm: {len(starts)} starts"
    assert agent.client.status().state is ServerState.RUNNING
    gaps = [start.time - exit_.time for exit_, start in zip(exits, starts, strict=True)]
    for attempt, gap in enumerate(gaps, start=1):
        # The policy: half to all of min(cap, initial * 2^(n-1)), plus the spawn itself.
        base = min(CAP, INITIAL * 2 ** (attempt - 1))
        assert base / 2 - 0.05 <= gap <= base + 1.0, f"restart {attempt} after {gap:.2f} s: {gaps}"
    assert max(gaps) <= CAP + 1.0, f"the backoff is capped at {CAP:g} s: {gaps}"
    assert sum(gaps[3:]) > sum(gaps[:2]), f"the backoff grows: {gaps}"
    assert all(b.time > a.time for a, b in itertools.pairwise(starts))
    assert not [e for e in events if e.kind == "fatal"]
    result = run_workload(stage.base_url, stage.credentials, 2, ["after"] * 2, 60.0)
    assert not result.errors, result.errors
