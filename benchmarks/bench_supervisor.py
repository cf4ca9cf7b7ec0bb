"""How fast the agent brings a crashed or hung OpenCode server back, and what it costs.

Measures, against the real OpenCode binary, in a private HOME:
- OpenCode's own cold start (launch to first healthy answer), the baseline;
- kill -9 of the server to healthy again, through the agent;
- SIGSTOP of the server (hung) to healthy again;
- the agent's CPU (% of one core) and resident memory over a window of supervising.

Usage: python benchmarks/bench_supervisor.py [--runs 5] [--window 60]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.errors import NexusOpsError
from nexus_ops.opencode import native_binary_in

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(root: Path, binary: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    for name in ("home", "data", "config", "cache", "state", "nexus"):
        (root / name).mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(root / "home"), XDG_DATA_HOME=str(root / "data"),
        XDG_CONFIG_HOME=str(root / "config"), XDG_CACHE_HOME=str(root / "cache"),
        XDG_STATE_HOME=str(root / "state"), NEXUS_HOME=str(root / "nexus"),
        NEXUS_OPENCODE_BIN=str(binary), NEXUS_OPENCODE_PORT=str(free_port()),
        NEXUS_AGENT_PORT=str(free_port()),
    )  # fmt: skip
    return env


def poll(condition: Callable[[], bool], timeout: float = 60.0, interval: float = 0.02) -> float:
    """Seconds until ``condition`` holds."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            if condition():
                return time.perf_counter() - started
        except (NexusOpsError, httpx.HTTPError):
            pass
        time.sleep(interval)
    raise TimeoutError("condition not met")


def cold_start(binary: Path, env: dict[str, str]) -> float:
    """OpenCode alone: launch to the first healthy answer."""
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(binary), "serve", "--hostname", "127.0.0.1", "--port", str(port)],
        env={**env, "OPENCODE_SERVER_PASSWORD": "bench"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/global/health"

    def healthy() -> bool:
        return httpx.get(url, auth=("opencode", "bench"), timeout=1.0).status_code == 200

    try:
        poll(healthy)
        return time.perf_counter() - started
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def recovery(client: AgentClient, sig: signal.Signals, settle: float) -> float:
    """Signal a stable server; seconds until a new server is running and healthy."""
    time.sleep(settle)  # past the stable period: each run is a first failure, no backoff
    old = client.status().pid
    assert old is not None
    os.kill(old, sig)
    started = time.perf_counter()

    def replaced() -> bool:
        status = client.status()
        return status.healthy and status.pid not in (None, old)

    poll(replaced, timeout=90)
    return time.perf_counter() - started


def agent_cost(pid: int, window: float) -> tuple[float, float]:
    """(CPU % of one core, peak RSS MB) of the agent over ``window`` seconds."""
    proc = psutil.Process(pid)
    cpu0 = sum(proc.cpu_times()[:2])
    started = time.perf_counter()
    peak = 0
    while time.perf_counter() - started < window:
        peak = max(peak, proc.memory_info().rss)
        time.sleep(1.0)
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    return 100.0 * cpu / (time.perf_counter() - started), peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    binary = native_binary_in(ROOT / ".cache" / "opencode" / "node_modules")
    if binary is None:
        sys.exit("no OpenCode binary: run `make opencode` first")
    with tempfile.TemporaryDirectory() as tmp:
        env = environment(Path(tmp), binary)
        colds = [cold_start(binary, env) for _ in range(args.runs)]
        # Each injected fault must meet a stable server (backoff reset) and the runs
        # must not add up to the restart limit: both are the policy, not the cost.
        fault_env = {**env, "NEXUS_STABLE_PERIOD": "2", "NEXUS_RESTART_LIMIT": "100"}
        agent = subprocess.Popen(
            [sys.executable, "-m", "nexus_ops", "agent", "run"], env=fault_env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        client = AgentClient.from_settings(load_settings(env), timeout=90)
        try:
            poll(lambda: client.health() is not None)
            client.start()
            crashes = [recovery(client, signal.SIGKILL, 3.0) for _ in range(args.runs)]
            hangs = [recovery(client, signal.SIGSTOP, 3.0) for _ in range(args.runs)]
        finally:
            agent.terminate()
            agent.wait(timeout=30)
        # The cost, at default settings: a new agent adopts the running server.
        agent = subprocess.Popen(
            [sys.executable, "-m", "nexus_ops", "agent", "run"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            poll(lambda: client.status().healthy)
            time.sleep(5.0)  # past start-up work
            cpu, rss = agent_cost(agent.pid, args.window)
            client.stop()
        finally:
            agent.terminate()
            agent.wait(timeout=30)
    cold = statistics.median(colds)
    crash, hang = statistics.median(crashes), statistics.median(hangs)
    print(f"opencode cold start (baseline), median of {args.runs}: {cold:.2f} s")
    print(f"kill -9 -> healthy, median of {args.runs}: {crash:.2f} s "
          f"(cold start + {crash - cold:.2f} s; target: + 1.0 s)")  # fmt: skip
    print(f"SIGSTOP -> healthy, median of {args.runs}: {hang:.2f} s "
          f"(cold start + {hang - cold:.2f} s; target: + 5.0 s)")  # fmt: skip
    print(f"agent over {args.window:.0f} s supervising: {cpu:.2f} % of one core "
          f"(target < 1 %), peak RSS {rss:.1f} MB (target < 80 MB)")  # fmt: skip


if __name__ == "__main__":
    main()
