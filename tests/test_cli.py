"""The `nexus-ops` command against a real agent and server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import RunningAgent, wait_for

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
