"""The agent is known by its pidfile before its token is sent; start errors are clear.

A real squatter (a small HTTP server in another process) holds the agent's port and
records every request it gets: the CLI must name it and never hand it the token.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RunningAgent, nexus_cli, private_env

from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.errors import AgentUnavailable, PortInUse
from nexus_ops.paths import Layout, read_or_create_secret

# Answers every GET like an agent would (pid and all) and writes down each request's headers.
SQUATTER = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

log = open(sys.argv[2], "a", buffering=1)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        log.write(json.dumps({"path": self.path, "headers": dict(self.headers)}) + "\\n")
        body = json.dumps({"status": "ok", "version": "0.1.0", "uptime_seconds": 1.0,
                           "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("listening", flush=True)
server.serve_forever()
"""


class Squatter:
    def __init__(self, port: int, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SQUATTER, str(port), str(log)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "listening"

    def requests(self) -> list[dict[str, object]]:
        text = self.log.read_text() if self.log.exists() else ""
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A private environment whose agent token exists, as on a host that ran an agent."""
    environment = private_env(tmp_path)
    read_or_create_secret(Layout(Path(environment["NEXUS_HOME"])).ensure().agent_token_file)
    return environment


@pytest.fixture
def squatter(env: dict[str, str], tmp_path: Path) -> Iterator[Squatter]:
    running = Squatter(int(env["NEXUS_AGENT_PORT"]), tmp_path / "squatter.jsonl")
    yield running
    running.proc.kill()
    running.proc.wait()


def token_of(env: dict[str, str]) -> str:
    return (Path(env["NEXUS_HOME"]) / "secrets" / "agent.token").read_text().strip()


def test_a_squatter_on_the_agent_port_is_named_and_never_gets_the_token(
    env: dict[str, str], squatter: Squatter
) -> None:
    pid = squatter.proc.pid
    started = nexus_cli(env, "agent", "start")
    assert started.returncode == 1, started
    assert f"pid {pid}" in started.stderr and "NEXUS_AGENT_PORT" in started.stderr
    assert "not by the agent" in started.stderr and "Traceback" not in started.stderr
    status = nexus_cli(env, "server", "status")
    assert status.returncode == 1, status
    assert f"pid {pid}" in status.stderr and "Traceback" not in status.stderr
    with (
        AgentClient.from_settings(load_settings(env)) as client,
        pytest.raises(PortInUse, match=f"pid {pid}"),
    ):
        client.health()
    assert squatter.requests() == [], "the squatter was sent a request"
    assert token_of(env)  # there was a token to leak


def test_a_stale_pidfile_does_not_vouch_for_the_squatter(
    env: dict[str, str], squatter: Squatter
) -> None:
    # The pidfile of an agent that died, its pid since given to the squatter.
    layout = Layout(Path(env["NEXUS_HOME"]))
    record = {"pid": squatter.proc.pid, "create_time": 1.0, "cmdline": ["python", "-m"]}
    layout.agent_pidfile.write_text(json.dumps(record))
    result = nexus_cli(env, "agent", "start")
    assert result.returncode == 1 and f"pid {squatter.proc.pid}" in result.stderr, result
    assert squatter.requests() == []


def test_no_agent_and_no_squatter_is_unavailable(env: dict[str, str]) -> None:
    with (
        AgentClient.from_settings(load_settings(env)) as client,
        pytest.raises(AgentUnavailable, match="nexus-ops agent start"),
    ):
        client.status()


def test_agent_run_on_a_taken_port_names_the_agent_port_setting(
    env: dict[str, str], squatter: Squatter
) -> None:
    result = nexus_cli(env, "agent", "run", timeout=60)
    assert result.returncode == 1, result
    assert f"pid {squatter.proc.pid}" in result.stderr
    assert "NEXUS_AGENT_PORT" in result.stderr and "NEXUS_OPENCODE_PORT" not in result.stderr


def test_the_real_agent_passes_and_is_named(agent: RunningAgent) -> None:
    assert agent.client.health().pid == agent.proc.pid
    result = nexus_cli(agent.env, "agent", "start")
    assert result.returncode == 0, result
    assert f"already running: pid {agent.proc.pid}" in result.stdout


def test_an_explicit_agent_url_is_trusted_without_a_pidfile(
    env: dict[str, str], squatter: Squatter
) -> None:
    # NEXUS_AGENT_URL: the operator vouches for the address (another container, a tunnel).
    url = f"http://127.0.0.1:{env['NEXUS_AGENT_PORT']}"
    settings = load_settings({**env, "NEXUS_AGENT_URL": url})
    with AgentClient.from_settings(settings) as client:
        assert client.health().pid == squatter.proc.pid
    assert [r["path"] for r in squatter.requests()] == ["/health"]


def test_an_agent_that_begins_to_listen_between_the_two_looks_passes(
    agent: RunningAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A starting agent: its pidfile is written, its socket not yet listening at the first
    # look at its sockets, listening when the port is tried a moment later.
    import nexus_ops.client as client_module

    looks: list[list[str]] = []
    real = client_module.listen_addresses

    def not_yet_at_first(pid: int, port: int) -> list[str]:
        looks.append(real(pid, port))
        return [] if len(looks) == 1 else looks[-1]

    monkeypatch.setattr(client_module, "listen_addresses", not_yet_at_first)
    client_module.verify_local_agent(load_settings(agent.env))
    assert len(looks) == 2 and looks[1]
