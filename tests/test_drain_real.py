"""Session-aware supervision against the real OpenCode on the scripted model provider:
soft restarts wait for busy sessions, hard faults record the prompts they cut.

One agent and one server serve the whole module (``stage_helpers.open_stage``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest
from browser import shot
from conftest import free_port, nexus_cli, wait_for
from playwright.sync_api import Browser, expect
from stage_helpers import (
    DRAIN,
    LONG,
    Stage,
    busy_agent,
    events_of,
    messages_of,
    new_healthy_pid,
    sleep_script,
    stage_fixture,
)
from test_console_e2e import interrupt, open_console, serve

from nexus_ops.ui.base import PanelContext
from nexus_ops.ui.server import ServerPanel

pytestmark = pytest.mark.opencode

SHORT = "sleep eight"
SCRIPT = sleep_script(SHORT, 8)
FAST_REFRESH = {"NEXUS_CONSOLE_REFRESH": "1"}


stage = stage_fixture("drain", SCRIPT)


def test_restart_when_idle_waits_for_the_busy_prompt_then_restarts(stage: Stage) -> None:
    agent, pid, before, session = busy_agent(stage, f"please {SHORT}", **DRAIN)

    ran = nexus_cli(stage.agent.env, "server", "restart", "--when-idle")
    assert ran.returncode == 0, ran.stderr
    assert "restart waiting for 1 busy session(s)" in ran.stdout and session in ran.stdout

    status = agent.client.status()
    assert status.pid == pid, "the server is not restarted while its session is busy"
    assert status.pending_restart is not None
    assert status.pending_restart.reason == "operator"
    assert status.pending_restart.sessions == [session]
    [waiting] = events_of(agent, "restart_waiting", before)
    assert waiting.details["sessions"] == [session] and waiting.pid == pid
    panel = ServerPanel(PanelContext(client=agent.client, run=lambda work: None))
    assert panel.refresh()
    assert "Restart waiting" in panel.details.value
    assert f"operator restart waits for {session}" in panel.details.value

    new_pid = wait_for(lambda: new_healthy_pid(agent, pid), 40, what="the restart after the prompt")
    [drained] = events_of(agent, "restart_drained", before)
    assert drained.details["sessions"] == [session]
    assert not events_of(agent, "drain_timeout", before)
    assert not events_of(agent, "prompt_cut", before)
    # The prompt ran to its end on the old server: its tool call completed, then the answer.
    messages = messages_of(stage, session)
    tools = [p["state"]["status"] for m in messages for p in m["parts"] if p["type"] == "tool"]
    assert tools == ["completed"]
    answer = messages[-1]
    assert answer["info"]["role"] == "assistant" and not answer["info"].get("error")
    assert "Done." in [p.get("text") for p in answer["parts"] if p["type"] == "text"]
    assert answer["info"]["time"]["completed"] / 1000 <= drained.time
    assert agent.client.status().pending_restart is None
    assert new_pid != pid


def test_a_kill_9_during_a_busy_prompt_records_the_cut_prompt(stage: Stage) -> None:
    agent, pid, before, session = busy_agent(stage, f"please {LONG}", **DRAIN)
    time.sleep(1.5)  # busy for a while, as seen by more than one poll
    os.kill(pid, signal.SIGKILL)

    wait_for(lambda: new_healthy_pid(agent, pid), 40, what="the restart after kill -9")
    [cut] = events_of(agent, "prompt_cut", before)
    assert cut.details["session"] == session and cut.pid == pid and cut.reason == "crash"
    assert cut.details["busy_seconds"] >= 1.0
    assert session in cut.message
    assert not events_of(agent, "restart_waiting", before)


def test_the_drain_timeout_restarts_anyway_and_names_the_cut_session(stage: Stage) -> None:
    agent, pid, before, session = busy_agent(stage, f"please {LONG}", NEXUS_DRAIN_TIMEOUT="2")

    result = agent.client.restart(when_idle=True)
    assert result.ok and result.status.pending_restart is not None

    wait_for(lambda: new_healthy_pid(agent, pid), 40, what="the restart after the drain limit")
    [timeout] = events_of(agent, "drain_timeout", before)
    assert timeout.details["sessions"] == [session]
    assert session in timeout.message and "restarting anyway" in timeout.message
    assert timeout.details["busy_seconds"][session] >= 2
    [cut] = events_of(agent, "prompt_cut", before)
    assert cut.details["session"] == session and cut.pid == pid and cut.reason == "operator"


def test_the_soft_memory_limit_waits_for_the_busy_prompt(stage: Stage) -> None:
    agent, pid, before, session = busy_agent(stage, f"please {SHORT}", **DRAIN)
    # An agent with a soft limit far below what any server holds adopts this one.
    agent = stage.with_settings(
        **DRAIN, NEXUS_MEMORY_LIMIT_MB="64", NEXUS_MEMORY_LIMIT_DURATION="0.5"
    )
    waiting = wait_for(lambda: events_of(agent, "restart_waiting", before), 20, what="waiting")
    [event] = waiting  # type: ignore[misc]
    assert event.reason == "memory" and event.details["sessions"] == [session]
    assert event.pid == pid
    [limit] = events_of(agent, "memory_limit", before)
    assert "restarting once no session is busy" in limit.message
    wait_for(lambda: events_of(agent, "restart_drained", before), 30, what="the drained restart")
    assert not events_of(agent, "prompt_cut", before)
    stage.with_settings(**DRAIN)  # the next servers are over the limit too: restarted idle
    answer = messages_of(stage, session)[-1]
    assert answer["info"]["role"] == "assistant" and not answer["info"].get("error")


def test_the_hard_memory_limit_restarts_at_once_and_records_the_cut_prompt(
    stage: Stage,
) -> None:
    agent, pid, before, session = busy_agent(stage, f"please {LONG}", **DRAIN)
    agent = stage.with_settings(**DRAIN, NEXUS_MEMORY_HARD_LIMIT_MB="64")
    cuts = wait_for(lambda: events_of(agent, "prompt_cut", before), 20, what="the cut prompt")
    [cut] = [e for e in cuts if e.pid == pid]  # type: ignore[attr-defined]
    assert cut.details["session"] == session and cut.reason == "memory"
    assert not events_of(agent, "restart_waiting", before)
    hard = [e for e in events_of(agent, "memory_limit", before) if e.pid == pid]
    assert hard and "over the hard limit of 64 MiB" in hard[0].message
    stage.with_settings(**DRAIN)


@pytest.mark.browser
def test_the_console_server_tab_shows_the_waiting_restart_in_chromium(
    stage: Stage, browser: Browser
) -> None:
    agent = stage.with_settings(**DRAIN)
    console = serve({**agent.env, "NEXUS_CONSOLE_PORT": str(free_port()), **FAST_REFRESH})
    try:
        page = open_console(browser, console.url)
        agent, _, before, session = busy_agent(stage, f"please {SHORT}", **DRAIN)
        expect(page.locator(".nx-server-busy")).to_contain_text(session, timeout=30_000)
        assert agent.client.restart(when_idle=True).status.pending_restart is not None
        waiting = page.locator(".nx-server-waiting")
        expect(waiting).to_contain_text(f"operator restart waits for {session}", timeout=30_000)
        shot(page, "server-restart-waiting")
        expect(waiting).to_be_hidden(timeout=60_000)  # drained, restarted
        expect(page.locator(".nx-server-state")).to_have_text("running", timeout=60_000)
        assert events_of(agent, "restart_drained", before)
        page.close()
    finally:
        with contextlib.suppress(Exception):
            interrupt(console)
