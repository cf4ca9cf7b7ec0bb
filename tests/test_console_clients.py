"""Connecting clients to the managed server: the real `opencode` CLI, with the password unseen."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from backup_helpers import install_config
from conftest import RunningAgent, nexus_cli, start_agent, wait_for

from nexus_ops.opencode import attach_environment
from nexus_ops.paths import Layout

CREDENTIALS_IN_URL = re.compile(r"://[^/\s\"']*@")


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


def password_of(agent: RunningAgent) -> str:
    return Layout(agent.settings.home).server_password_file.read_text().strip()


def sessions(agent: RunningAgent) -> list[dict[str, object]]:
    url = agent.settings.opencode_base_url
    response = httpx.get(f"{url}/session", auth=("opencode", password_of(agent)), timeout=10)
    response.raise_for_status()
    return list(response.json())


def test_connect_prints_working_commands_with_the_password_masked(served: RunningAgent) -> None:
    password = password_of(served)
    url = served.settings.opencode_base_url
    masked = nexus_cli(served.env, "opencode", "connect")
    assert masked.returncode == 0, masked.stderr
    assert password not in masked.stdout and "********" in masked.stdout
    assert (
        f"opencode attach {url}" in masked.stdout and "nexus-ops opencode attach" in masked.stdout
    )
    assert "curl -u" in masked.stdout and "createOpencodeClient" in masked.stdout
    assert not CREDENTIALS_IN_URL.search(masked.stdout)
    shown = nexus_cli(served.env, "opencode", "connect", "--show-password")
    assert f"OPENCODE_SERVER_PASSWORD={password} opencode attach {url}" in shown.stdout
    assert not CREDENTIALS_IN_URL.search(shown.stdout)
    curl = next(line for line in shown.stdout.splitlines() if line.startswith("curl "))
    answer = subprocess.run(curl, shell=True, capture_output=True, text=True, check=False)
    assert '"healthy":true' in answer.stdout


def test_opencode_run_attach_with_the_password_in_the_environment_reaches_the_server(
    served: RunningAgent, opencode_bin: Path, tmp_path: Path
) -> None:
    """The documented `OPENCODE_SERVER_PASSWORD=... opencode run --attach URL` makes a session
    (offline, the model never answers: the session's existence is the proof)."""
    env = {**served.env, **attach_environment("opencode", password_of(served))}
    argv = [str(opencode_bin), "run", "--attach", served.settings.opencode_base_url, "hello"]
    with (tmp_path / "run.log").open("wb") as log:
        run = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: sessions(served), timeout=60, what="a session made by opencode run")
    finally:
        run.kill()
        run.wait()
    assert "Session not found" not in (tmp_path / "run.log").read_text(errors="replace")


def read_screen(fd: int, proc: psutil.Process, until: str, timeout: float) -> str:
    """What a TUI wrote to its terminal, plain text, once ``until`` shows (or time is up)."""
    raw = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.is_running():
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                raw += os.read(fd, 65536)
            except OSError:
                break
        text = re.sub(
            r"\x1b\[[0-9;?>]*[a-zA-Z]|\x1b\][^\x07]*\x07", "", raw.decode("utf-8", "replace")
        )
        if until in text:
            return text
    return text if raw else ""


def test_nexus_ops_opencode_attach_opens_the_tui_without_the_password_in_sight(
    served: RunningAgent,
) -> None:
    """Under a pty, the real TUI reaches its prompt; the password is in no argv nor output."""
    password = password_of(served)
    sessions(served)  # the server's API answers before the TUI asks it anything
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**served.env, "TERM": "xterm-256color"}
    popen = subprocess.Popen(
        [sys.executable, "-m", "nexus_ops", "opencode", "attach"],
        env=env,
        stdin=child,
        stdout=child,
        stderr=child,
        start_new_session=True,
    )
    os.close(child)
    proc = psutil.Process(popen.pid)
    try:
        screen = read_screen(main, proc, "Ask anything", timeout=60)
        journal = [(e.kind, e.message) for e in served.client.events(limit=20)]
        assert "Ask anything" in screen, (screen[-2000:], journal)
        assert "401" not in screen and password not in screen
        argv = " ".join(proc.cmdline())
        assert "attach" in argv and served.settings.opencode_base_url in argv
        assert password not in argv
        assert proc.environ()["OPENCODE_SERVER_PASSWORD"] == password
    finally:
        popen.kill()
        popen.wait()
        os.close(main)


def test_attach_before_the_server_ever_ran_says_what_to_do(nexus_env: dict[str, str]) -> None:
    for args in (("attach",), ("connect", "--show-password")):
        result = nexus_cli(nexus_env, "opencode", *args, timeout=60)
        assert result.returncode == 1 and "Traceback" not in result.stderr, args
        assert "no password file" in result.stderr and "start the server" in result.stderr
