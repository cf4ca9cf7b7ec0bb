"""The agent as a background daemon: start it, find it, stop it."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from nexus_ops.client import AgentClient
from nexus_ops.config import Settings, child_environment
from nexus_ops.errors import AgentUnavailable, NexusOpsError
from nexus_ops.logs import tail
from nexus_ops.models import ProcessRecord
from nexus_ops.paths import Layout
from nexus_ops.process import find_live, load_record, spawn, terminate_process


@dataclass(frozen=True)
class DaemonInfo:
    pid: int | None
    url: str
    started: bool


def running_agent(settings: Settings) -> ProcessRecord | None:
    """The record of this host's agent, if its pidfile points at a live agent."""
    record = load_record(Layout(settings.home).agent_pidfile)
    return record if record is not None and find_live(record) is not None else None


def answers(settings: Settings) -> bool:
    with AgentClient.from_settings(settings, timeout=2.0) as client:
        try:
            client.health()
        except AgentUnavailable:
            return False
    return True


def start_daemon(settings: Settings, timeout: float = 30.0) -> DaemonInfo:
    """Start ``nexus-ops agent`` in the background unless one answers; wait until it does."""
    if answers(settings):
        record = running_agent(settings)
        return DaemonInfo(record.pid if record else None, settings.agent_base_url, False)
    layout = Layout(settings.home).ensure()
    argv = [sys.executable, "-m", "nexus_ops", "agent", "run"]
    # The agent runs in NEXUS_HOME, where this process's .env files are out of reach:
    # it gets the settings read here, so that both agree (NEXUS_HOME above all).
    spawned = spawn(argv, child_environment(settings), layout.home, layout.agent_log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if spawned.popen.poll() is not None:
            last = "\n".join(tail(layout.agent_log, 15))
            raise NexusOpsError(
                f"the agent exited at once (code {spawned.popen.returncode}):\n{last}",
                hint=f"read {layout.agent_log}",
            )
        if answers(settings):
            return DaemonInfo(spawned.record.pid, settings.agent_base_url, True)
        time.sleep(0.1)
    raise AgentUnavailable(
        f"the agent did not answer within {timeout:g} s",
        hint=f"read {layout.agent_log}",
    )


def stop_daemon(settings: Settings, grace: float = 15.0) -> list[int]:
    """Stop this host's agent (the server keeps running); return surviving pids."""
    record = running_agent(settings)
    if record is None:
        raise AgentUnavailable(
            "no agent is running for this NEXUS_HOME",
            hint="nothing to stop; `nexus-ops agent start` starts one",
        )
    # Only the agent: the server it started is its child but must keep running.
    return terminate_process(record, grace)
