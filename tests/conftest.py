"""Shared fixtures: the real OpenCode binary, a private HOME, and a real agent.

Every test that runs a server gets HOME, XDG_* and NEXUS_HOME in its own temporary
folder and free ports, so that tests never touch the user's data and can run
beside other servers on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from nexus_ops.client import AgentClient
from nexus_ops.config import Settings, load_settings
from nexus_ops.errors import AgentUnavailable
from nexus_ops.metrics.frames import Points
from nexus_ops.opencode import native_binary_in

if TYPE_CHECKING:
    import pandas as pd
    from playwright.sync_api import Browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> object:
    """Poll ``condition`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = condition()
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what or condition} (last: {last!r})")


@pytest.fixture(scope="session")
def opencode_bin() -> Path:
    """The real native OpenCode binary (installed by `make opencode`)."""
    prefix = Path(os.environ.get("NXOPS_TEST_OPENCODE_PREFIX", ROOT / ".cache" / "opencode"))
    binary = native_binary_in(prefix.resolve() / "node_modules")
    if binary is None:
        pytest.fail(f"no OpenCode binary under {prefix}: run `make opencode` first")
    return binary


def private_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a test: the machine's, minus NEXUS_*, with a private HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    for name in ("home", "data", "config", "cache", "state", "nexus"):
        (root / name).mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(root / "home"),
        XDG_DATA_HOME=str(root / "data"),
        XDG_CONFIG_HOME=str(root / "config"),
        XDG_CACHE_HOME=str(root / "cache"),
        XDG_STATE_HOME=str(root / "state"),
        NEXUS_HOME=str(root / "nexus"),
        NEXUS_OPENCODE_PORT=str(free_port()),
        NEXUS_AGENT_PORT=str(free_port()),
    )
    env.update(extra or {})
    return env


@pytest.fixture
def nexus_env(tmp_path: Path, opencode_bin: Path) -> Iterator[dict[str, str]]:
    """A private environment for one test; every process it started is killed after."""
    env = private_env(tmp_path, {"NEXUS_OPENCODE_BIN": str(opencode_bin)})
    yield env
    kill_everything_of(env)


def processes_of(env: dict[str, str]) -> list[psutil.Process]:
    """The processes of a test's environment: its NEXUS_HOME's, and servers on its ports."""
    marker_ports = {env["NEXUS_OPENCODE_PORT"], env["NEXUS_AGENT_PORT"]}
    home = env["NEXUS_HOME"]
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        with contextlib.suppress(psutil.Error):
            cmd = proc.info["cmdline"] or []
            environ = proc.info["environ"] or {}
            ours = environ.get("NEXUS_HOME") == home or (
                "serve" in cmd and any(port in cmd for port in marker_ports)
            )
            if ours and proc.pid != os.getpid():
                found.append(proc)
    return found


def kill_everything_of(env: dict[str, str]) -> None:
    """Kill the agent and any server that a test's environment left running."""
    for proc in processes_of(env):
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGCONT)
            proc.kill()


def shut_down(agent: RunningAgent, env: dict[str, str]) -> None:
    """Close the agent's client, stop it, and kill whatever the environment left running."""
    agent.client.close()
    with contextlib.suppress(Exception):
        agent.stop()
    kill_everything_of(env)


@dataclass
class RunningAgent:
    """A real agent subprocess (``python -m nexus_ops agent run``) and its client."""

    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    settings: Settings
    client: AgentClient
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)


def start_agent(env: dict[str, str], timeout: float = 30.0) -> RunningAgent:
    settings = load_settings(env)
    log = Path(env["NEXUS_HOME"]) / "agent-test.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus_ops", "agent", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"agent exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        client = AgentClient.from_settings(settings, timeout=90.0)
        try:
            client.health()
            return RunningAgent(env, proc, settings, client, log)
        except AgentUnavailable:
            client.close()
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"agent did not answer within {timeout:g} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def agent(nexus_env: dict[str, str]) -> Iterator[RunningAgent]:
    """A real agent supervising the real OpenCode binary, in a private HOME."""
    running = start_agent(nexus_env)
    yield running
    running.client.close()
    with contextlib.suppress(Exception):
        running.stop()


def nexus_cli(
    env: dict[str, str], *args: str, timeout: float = 120.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `nexus-ops` command as a user would (in ``cwd``, where .env files are read)."""
    return subprocess.run(
        [sys.executable, "-m", "nexus_ops", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def opencode_config(opencode_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OpenCode's config folder with its npm plugin installed: prepared once per session.

    Copy it into a test's environment with ``backup_helpers.install_config``.
    """
    from backup_helpers import prepare_opencode_config

    return prepare_opencode_config(opencode_bin, tmp_path_factory.mktemp("opencode-config"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Real headless Chromium from Debian (``apt-get install chromium``), driven by Playwright.

    One per module, never per session: Playwright's synchronous API keeps an event
    loop running in the main thread while it is open, and ``asyncio.run`` in any
    later test would fail.
    """
    from browser import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


def points_of(frame: pd.DataFrame) -> list[Points]:
    """A tidy frame as the series the agent's JSON gives."""
    return [
        Points(
            metric,
            labels,
            (rows["time"].astype("int64") / 1e9).to_numpy(),
            rows["value"].to_numpy(),
        )
        for (metric, labels), rows in frame.groupby(["metric", "labels"], sort=True)
    ]
