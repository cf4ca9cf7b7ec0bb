"""Shared pieces of the upgrade tests: a host running the real older OpenCode (1.15.13,
whose database schema 1.18.33 migrates) under a real agent, sessions filled by the
scripted workload, and what the tests read back (the server's sessions and messages,
the operation record, the journal)."""

from __future__ import annotations

import contextlib
import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from backup_helpers import install_config
from conftest import RunningAgent, nexus_cli, private_env, shut_down, start_agent, wait_for
from versions_helpers import lay_out, lay_out_modules

from nexus_ops.models import Event
from nexus_ops.opencode import Credentials
from nexus_ops.paths import Layout
from nexus_ops.store.backups_copy import integrity_check
from nexus_ops.workload.config import write_provider_config
from nexus_ops.workload.driver import run_workload
from nexus_ops.workload.provider import ScriptedProvider
from nexus_ops.workload.script import Reply, Script

OLD = "1.15.13"  # its opencode.db has __drizzle_migrations; 1.18.33 migrates it
NEW = "1.18.33"
SCRIPT = Script(default=Reply(text="Hello from the script"))


@dataclass
class Host:
    """A private HOME, the agent and the OpenCode server it runs."""

    env: dict[str, str]
    agent: RunningAgent

    @property
    def home(self) -> Path:
        return Path(self.env["NEXUS_HOME"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['NEXUS_OPENCODE_PORT']}"

    @property
    def credentials(self) -> Credentials:
        password = Layout(self.home).server_password_file.read_text().strip()
        return Credentials("opencode", password)

    @property
    def database(self) -> Path:
        return Path(self.env["XDG_DATA_HOME"]) / "opencode" / "opencode.db"

    def opencode(self, path: str) -> Any:
        auth = (self.credentials.username, self.credentials.password)
        response = httpx.get(self.base_url + path, auth=auth, timeout=10)
        response.raise_for_status()
        return response.json()

    def fill(self, sessions: int = 3, prompts: int = 2) -> dict[str, list[str]]:
        """Sessions with messages made through the server; what it holds after."""
        texts = [f"hello number {i}" for i in range(prompts)]
        result = run_workload(self.base_url, self.credentials, sessions, texts)
        assert not result.errors, result.errors
        return self.contents()

    def contents(self) -> dict[str, list[str]]:
        """Every session the server lists -> the ids of its messages, in order."""
        return {
            str(row["id"]): [
                m["info"]["id"] for m in self.opencode(f"/session/{row['id']}/message")
            ]
            for row in self.opencode("/session")
        }

    def record(self) -> dict[str, Any] | None:
        path = self.home / "upgrades" / "operation.json"
        return dict(json.loads(path.read_text())) if path.exists() else None

    def step(self) -> str | None:
        found = self.record()
        return None if found is None else str(found["step"])

    def active(self) -> str:
        done = nexus_cli(self.env, "opencode", "versions", "--json")
        return str(json.loads(done.stdout)["active"])

    def events(self, kind: str) -> list[Event]:
        return [e for e in self.agent.client.events(limit=2000) if e.kind == kind]

    def restart_agent(self) -> RunningAgent:
        """A new agent on the same NEXUS_HOME (after the old one was killed)."""
        self.agent.client.close()
        self.agent = start_agent(self.env)
        return self.agent

    def wait_settled(self, timeout: float = 90) -> dict[str, Any]:
        record = wait_for(
            lambda: (r := self.record()) is not None and r["outcome"] is not None and r,
            timeout,
            what="the operation to end",
        )
        assert isinstance(record, dict)
        return record

    def wait_serving(self, version: str, timeout: float = 60) -> None:
        wait_for(
            lambda: (
                self.agent.client.status().healthy
                and self.opencode("/global/health")["version"] == version
            ),
            timeout,
            what=f"OpenCode {version} to serve",
        )

    def check_consistent(self, version: str, contents: dict[str, list[str]]) -> None:
        """One version active and serving, its database whole, every message there."""
        assert self.active() == version
        self.wait_serving(version)
        assert integrity_check(self.database) == "ok"
        now = self.contents()
        for session, ids in contents.items():
            assert now.get(session) == ids, (session, ids, now.get(session))


def old_versions_env(root: Path, npm_cache: Path, **settings: str) -> dict[str, str]:
    return private_env(
        root,
        {"npm_config_cache": str(npm_cache), "NEXUS_UPGRADE_PROBATION": "0", **settings},
    )


@contextlib.contextmanager
def open_host(
    root: Path, old_modules: Path, config: Path, npm_cache: Path, **settings: str
) -> Iterator[Host]:
    """The older OpenCode active and running under a real agent, on the scripted model."""
    env = old_versions_env(root, npm_cache, **settings)
    install_config(config, env)
    lay_out_modules(old_modules, Path(env["NEXUS_HOME"]) / "opencode" / OLD)
    assert nexus_cli(env, "opencode", "use", OLD).returncode == 0
    with ScriptedProvider(SCRIPT) as provider:
        write_provider_config(Path(env["HOME"]), provider.base_url, Path(env["XDG_CONFIG_HOME"]))
        host = Host(env, start_agent(env))
        try:
            assert host.agent.client.start().ok
            host.wait_serving(OLD)
            yield host
        finally:
            shut_down(host.agent, env)


def lay_out_new(opencode_bin: Path, host: Host) -> Path:
    """The real 1.18.33 beside the older one (hard links: no download)."""
    return lay_out(opencode_bin, host.home / "opencode" / NEW)


def lay_out_stalling(opencode_bin: Path, host: Host, after: float) -> Path:
    """A 1.18.33 whose server stops answering ``after`` s once started (its binary a
    wrapper that runs the real one, then SIGSTOPs it); ``--version`` answers as the real."""
    binary = lay_out_new(opencode_bin, host)
    binary.unlink()
    binary.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = serve ] || exec {opencode_bin} "$@"\n'
        f'{opencode_bin} "$@" &\n'
        "child=$!\n"
        f"sleep {after}\n"
        "kill -STOP $child\n"
        "wait $child\n",
        encoding="utf-8",
    )
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary
