"""One agent and one real OpenCode server on the scripted model provider, shared by
the tests of a module, and what those tests ask of them (busy sessions, the journal,
the server's own API).

A test that needs other settings starts a new agent with them
(:meth:`Stage.with_settings`), which adopts the running server (a second or two)
instead of starting a new one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from backup_helpers import install_config
from conftest import RunningAgent, private_env, shut_down, start_agent, wait_for

from nexus_ops.models import Event, ServerState
from nexus_ops.opencode import Credentials
from nexus_ops.paths import Layout
from nexus_ops.workload.config import write_provider_config
from nexus_ops.workload.provider import ScriptedProvider
from nexus_ops.workload.script import Reply, Rule, Script, bash

# Patient probes: on a loaded machine a busy server must not be taken for a hung one.
PATIENT = {"NEXUS_PROBE_TIMEOUT": "3", "NEXUS_PROBE_FAILURES": "5"}
DRAIN = {"NEXUS_DRAIN_TIMEOUT": "30"}
LONG = "sleep long"  # a prompt busy for a minute


def sleep_script(short: str, seconds: int, default: Reply | None = None) -> Script:
    """A prompt holding ``short`` keeps its session busy ``seconds``; one holding
    :data:`LONG`, 60 s; any other gets ``default``."""
    rules = [
        Rule(when=short, then=bash(f"sleep {seconds}")),
        Rule(when=LONG, then=bash("sleep 60")),
    ]
    return Script(rules=rules, default=default or Reply())


@dataclass
class Stage:
    """The module's agent, its settings, and the OpenCode server it supervises."""

    env: dict[str, str]
    agent: RunningAgent
    settings: dict[str, str]

    def with_settings(self, **settings: str) -> RunningAgent:
        """The agent, started anew (adopting the server) when its settings differ."""
        if settings != self.settings:
            self.agent.client.close()
            self.agent.stop()
            env = {k: v for k, v in self.env.items() if k not in self.settings}
            self.agent = start_agent({**env, **settings})
            self.settings = settings
            if self.agent.client.status().state in (ServerState.FATAL, ServerState.STOPPED):
                assert self.agent.client.start().ok
            wait_for(lambda: self.agent.client.status().healthy, 30, what="the adopted server")
        return self.agent

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['NEXUS_OPENCODE_PORT']}"

    @property
    def credentials(self) -> Credentials:
        password = Layout(Path(self.env["NEXUS_HOME"])).server_password_file.read_text().strip()
        return Credentials("opencode", password)

    def opencode(
        self, method: str, path: str, body: object = None, timeout: float = 10
    ) -> httpx.Response:
        """A request to the OpenCode server itself, as its clients send them."""
        auth = (self.credentials.username, self.credentials.password)
        return httpx.request(method, self.base_url + path, json=body, auth=auth, timeout=timeout)


def stage_fixture(name: str, script: Script) -> Callable[..., Iterator[Stage]]:
    """The module-scoped ``stage`` fixture of a test module: :func:`open_stage` with
    ``script`` and :data:`DRAIN`, in a folder named after ``name``."""

    @pytest.fixture(scope="module")
    def stage(
        opencode_bin: Path, opencode_config: Path, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Stage]:
        root = tmp_path_factory.mktemp(name)
        with open_stage(opencode_bin, opencode_config, root, script, DRAIN) as current:
            yield current

    return stage


@contextlib.contextmanager
def open_stage(
    opencode_bin: Path, opencode_config: Path, root: Path, script: Script, settings: dict[str, str]
) -> Iterator[Stage]:
    """A private HOME, the scripted provider answering ``script``, an agent with
    ``settings`` and its running server; everything is stopped after."""
    env = private_env(root, {"NEXUS_OPENCODE_BIN": str(opencode_bin), **PATIENT})
    install_config(opencode_config, env)
    with ScriptedProvider(script) as provider:
        write_provider_config(Path(env["HOME"]), provider.base_url, Path(env["XDG_CONFIG_HOME"]))
        running = start_agent({**env, **settings})
        current = Stage(env, running, dict(settings))
        try:
            assert running.client.start().ok
            yield current
        finally:
            shut_down(current.agent, env)


def busy_prompt(stage: Stage, agent: RunningAgent, text: str) -> str:
    """A new session sent ``text``; returned once the agent has seen it busy."""
    session = str(stage.opencode("POST", "/session", {}).json()["id"])
    parts = {"parts": [{"type": "text", "text": text}]}
    sent = stage.opencode("POST", f"/session/{session}/prompt_async", parts)
    assert sent.status_code == 204, sent.text
    wait_for(
        lambda: session in stage.opencode("GET", "/session/status").json(),
        60,
        what=f"OpenCode to say session {session} is busy",
    )
    wait_for(
        lambda: session in agent.client.status().busy_sessions,
        10,
        what=f"the agent to see session {session} busy",
    )
    return session


def event_ids(agent: RunningAgent) -> set[int]:
    return {e.id for e in agent.client.events(limit=1000)}


def events_of(agent: RunningAgent, kind: str, before: set[int]) -> list[Event]:
    """The events of ``kind`` journaled since ``before`` (the ids there were then)."""
    return [e for e in agent.client.events(limit=1000) if e.kind == kind and e.id not in before]


def new_healthy_pid(agent: RunningAgent, old: int) -> int | None:
    status = agent.client.status()
    if status.state is ServerState.RUNNING and status.healthy and status.pid not in (None, old):
        return status.pid
    return None


def messages_of(stage: Stage, session: str) -> list[dict[str, Any]]:
    return list(stage.opencode("GET", f"/session/{session}/message").json())


def busy_agent(stage: Stage, text: str, **settings: str) -> tuple[RunningAgent, int, set[int], str]:
    """The agent with ``settings``, its server's pid, the events so far, and a session
    kept busy by ``text``."""
    agent = stage.with_settings(**settings)
    pid = agent.client.status().pid
    assert pid is not None
    before = event_ids(agent)
    return agent, pid, before, busy_prompt(stage, agent, text)
