"""How fast the agent brings a crashed or hung OpenCode server back, and what it costs.

Measures, against the real OpenCode binary, in a private HOME:
- OpenCode's own cold start (launch to first healthy answer), the baseline;
- kill -9 of the server to healthy again, through the agent;
- SIGSTOP of the server (hung) to healthy again;
- the agent's CPU (% of one core) and resident memory over a window of supervising;
- with ``--flood``: the probe interval (mean and jitter, probes at 0.2 s) while
  clients keep the agent's API busy with long journal reads, and kill -9 to healthy
  under that load.

Usage: python benchmarks/bench_supervisor.py [--runs 5] [--window 60] [--flood 10]
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
import threading
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


def probes_sent(client: AgentClient) -> float:
    """Health probes the agent has sent so far (its request histogram)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in client.metrics_text().splitlines()
        if line.startswith("opencode_request_duration_seconds_count") and "/global/health" in line
    )


def flood(client: AgentClient, token: str, stop: threading.Event, workers: int = 6) -> None:
    """Clients that keep the agent's main loop busy with long journal reads."""
    url = f"{client.base_url}/api/v1/events?limit=10000"

    def hammer() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            while not stop.is_set():
                http.get(url)

    for _ in range(workers):
        threading.Thread(target=hammer, daemon=True).start()


def fill_journal(home: Path, events: int) -> None:
    from nexus_ops.paths import Layout
    from nexus_ops.store import Database, Journal

    db = Database(Layout(home).ensure().database)
    Journal(db)
    row = (time.time(), "note", None, "x" * 200, None, "{}")
    db.executemany(
        "INSERT INTO events (time, kind, reason, message, pid, details) VALUES (?, ?, ?, ?, ?, ?)",
        [row] * events,
    )
    db.close()


def flooded(binary: Path, root: Path, window: float) -> tuple[float, float, float, float]:
    """(mean probe interval, its jitter: stdev over 1 s slices, worst slice, kill -9 to
    healthy) with probes every 0.2 s while the API is flooded."""
    env = {**environment(root, binary), "NEXUS_PROBE_INTERVAL": "0.2"}
    fill_journal(Path(env["NEXUS_HOME"]), 30000)
    agent = subprocess.Popen(
        [sys.executable, "-m", "nexus_ops", "agent", "run"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    client = AgentClient.from_settings(load_settings(env), timeout=120)
    stop = threading.Event()
    try:
        poll(lambda: client.health() is not None)
        client.start()
        poll(lambda: probes_sent(client) > 0)
        token = (Path(env["NEXUS_HOME"]) / "secrets" / "agent.token").read_text().strip()
        flood(client, token, stop)
        intervals = []
        count, at = probes_sent(client), time.perf_counter()
        started = at
        while at - started < window:
            time.sleep(1.0)
            now_count, now = probes_sent(client), time.perf_counter()
            intervals.append((now - at) / max(now_count - count, 1))
            count, at = now_count, now
        crash = recovery(client, signal.SIGKILL, 0.0)
    finally:
        stop.set()
        agent.terminate()
        agent.wait(timeout=60)
    return statistics.mean(intervals), statistics.pstdev(intervals), max(intervals), crash


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--flood", type=float, default=0.0, help="seconds of API flood")
    args = parser.parse_args()
    binary = native_binary_in(ROOT / ".cache" / "opencode" / "node_modules")
    if binary is None:
        sys.exit("no OpenCode binary: run `make opencode` first")
    if args.flood:
        with tempfile.TemporaryDirectory() as tmp:
            mean, jitter, worst, crash = flooded(binary, Path(tmp), args.flood)
        print(f"probe interval (0.2 s) under an API flood, over {args.flood:.0f} s: "
              f"mean {mean:.3f} s, jitter (stdev of 1 s slices) {jitter:.3f} s, "
              f"worst slice {worst:.3f} s; kill -9 -> healthy {crash:.2f} s")  # fmt: skip
        return
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
