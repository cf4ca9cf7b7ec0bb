"""Resident memory of the agent container's processes: the agent and its OpenCode server.

Starts a real agent in a private HOME, has it start the real OpenCode server,
creates ``--sessions`` sessions through the server's API, then samples the
resident memory of the agent and of the server's process tree every
``--every`` seconds for ``--minutes``. Prints each sample and the peaks: the
figures the Kubernetes memory limit and ``NEXUS_MEMORY_LIMIT_MB`` are sized from
(deploy/k8s/).

The OpenCode binary is found like bench_backup.py finds it.

Usage: python benchmarks/bench_memory.py [--sessions 10] [--minutes 4] [--every 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from bench_backup import opencode_binary, private_env  # a sibling script: benchmarks/

from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.errors import NexusOpsError
from nexus_ops.paths import Layout
from nexus_ops.process import identify, tree_usage

MIB = 1024 * 1024


def memory_env(root: Path) -> dict[str, str]:
    binary = opencode_binary()
    if binary is None:
        raise SystemExit("no OpenCode binary: run `make opencode` or set NEXUS_OPENCODE_BIN")
    # Measure the server as it grows: no memory-limit restart in the middle.
    return {**private_env(root, binary), "NEXUS_MEMORY_LIMIT_MB": "0"}


def connect(env: dict[str, str], proc: subprocess.Popen[bytes]) -> AgentClient:
    settings = load_settings(env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the agent exited with {proc.returncode}")
        client = AgentClient.from_settings(settings, timeout=90.0)
        try:
            client.health()
            return client
        except NexusOpsError:
            client.close()
            time.sleep(0.2)
    raise SystemExit("the agent did not answer within 60 s")


def measure(args: argparse.Namespace, work: Path) -> None:
    env = memory_env(work)
    agent = subprocess.Popen(
        [sys.executable, "-m", "nexus_ops", "agent", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = connect(env, agent)
        if not client.start(wait=True).ok:
            raise SystemExit("the server did not start")
        pid = client.status().pid
        assert pid is not None
        server = identify(pid)
        password = Layout(Path(env["NEXUS_HOME"])).server_password_file.read_text().strip()
        url = f"http://127.0.0.1:{env['NEXUS_OPENCODE_PORT']}"
        auth = ("opencode", password)
        idle = tree_usage(server, None)
        print(f"idle server: {idle.rss_bytes / MIB if idle else 0:.0f} MiB")
        for _ in range(args.sessions):
            httpx.post(f"{url}/session", json={}, auth=auth, timeout=180).raise_for_status()
        print(f"{args.sessions} sessions created; sampling for {args.minutes:g} min")
        peaks = {"agent": 0.0, "server": 0.0, "both": 0.0}
        started = time.monotonic()
        while time.monotonic() - started < args.minutes * 60:
            usage = tree_usage(server, None)
            if usage is None:
                raise SystemExit("the server exited while measured")
            agent_mib = psutil.Process(agent.pid).memory_info().rss / MIB
            server_mib = usage.rss_bytes / MIB
            for name, value in (
                ("agent", agent_mib),
                ("server", server_mib),
                ("both", agent_mib + server_mib),
            ):
                peaks[name] = max(peaks[name], value)
            print(
                f"  {time.monotonic() - started:5.0f} s: server tree {server_mib:6.0f} MiB,"
                f" agent {agent_mib:5.0f} MiB, together {agent_mib + server_mib:6.0f} MiB",
                flush=True,
            )
            time.sleep(args.every)
        print(
            f"peaks: server tree {peaks['server']:.0f} MiB, agent {peaks['agent']:.0f} MiB,"
            f" together {peaks['both']:.0f} MiB"
        )
        client.stop()
        client.close()
    finally:
        agent.terminate()
        agent.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--every", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-memory-") as folder:
        measure(args, Path(folder))


if __name__ == "__main__":
    main()
