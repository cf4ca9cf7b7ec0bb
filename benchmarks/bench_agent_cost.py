"""What the agent costs while someone watches: memory, CPU per Metrics refresh, idle CPU.

    python benchmarks/bench_agent_cost.py            # about 6 minutes
    python benchmarks/bench_agent_cost.py --quick    # shorter windows, about 3 minutes

With the real agent and the real OpenCode server in a private HOME whose
metrics.db holds two days of history (at the sampler's rates), prints in one run:

- the agent's resident memory idle, after a console's queries (every range of the
  Metrics tab), and after a console session (refreshes every 0.5 s, every range);
- CPU per refresh of the Metrics tab: the agent's (its process's CPU during the
  refreshes less its idle rate) and the console's (this process, which runs the
  tab's refresh as a console kernel does, less the widgets' messages to a
  browser), with 4 and with 64 series of ``opencode_connections``;
- the agent's idle CPU at 5 s and 1 s sampling, beside a floor loop measured in
  the same window: a minimal process that does the same probes (a liveness probe
  a second on a fresh connection; every interval the process tree's reading and
  ``GET /session/status``, ``GET /session`` every 5 s);
- query time, in the store, of the last 1 h, 1 d, 30 d and 365 d at 2,000 points
  over a year of synthesized history.

Targets: at most 80 MB resident in every case; at most 20 ms of agent CPU and
50 ms of console CPU per refresh; idle at 1 s sampling under 1 % of a core, at
the default interval at most twice the floor; every range under 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
from bench_backup import opencode_binary, private_env  # a sibling script: benchmarks/

from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.errors import NexusOpsError
from nexus_ops.metrics.backends import MetricQuery, SQLiteBackend
from nexus_ops.paths import Layout
from nexus_ops.store.samples import SampleStore
from nexus_ops.ui.base import PanelContext
from nexus_ops.ui.metrics import RANGES, MetricsPanel

MB = 1e6
DAY = 86400.0
CONNECTIONS = "opencode_connections"

# A loop doing the agent's probes and nothing else, in its own process.
FLOOR = textwrap.dedent(
    """
    import base64, http.client, sys, time
    from nexus_ops.metrics.proctree import SelfMeter, TreeMeter
    from nexus_ops.process import identify
    host, port, user, password, pid, interval = sys.argv[1:7]
    record, tree, me = identify(int(pid)), TreeMeter(), SelfMeter()
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    def get(conn, path):
        conn.request("GET", path, headers=auth)
        conn.getresponse().read()
    keep = http.client.HTTPConnection(host, int(port), timeout=1.0)
    next_sample = next_list = 0.0
    while True:
        started = time.monotonic()
        fresh = http.client.HTTPConnection(host, int(port), timeout=1.0)
        get(fresh, "/global/health")
        fresh.close()
        if started >= next_sample:
            tree.sample(record, int(port)); me.sample()
            if started >= next_list:
                get(keep, "/session")
                next_list = started + max(5.0, float(interval))
            get(keep, "/session/status")
            next_sample = started + float(interval)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    """
)


def synthesize(path: Path, end: float, connections: int, days: float = 2.0) -> None:
    """What the sampler writes in ``days`` at 5 s (request durations: health a second)."""
    rng = np.random.default_rng(11)
    store = SampleStore(path)
    every5 = np.arange(end - days * DAY, end - 30, 5.0)
    n = len(every5)
    flat = {
        "opencode_server_status": np.ones(n),
        "opencode_server_uptime_seconds": every5 - every5[0],
        "opencode_server_starts_total": np.ones(n),
        "opencode_process_resident_memory_bytes": 3.2e8 + rng.normal(0, 1e6, n),
        "nexus_agent_resident_memory_bytes": 7e7 + rng.normal(0, 1e5, n),
        "opencode_process_cpu_percent": rng.gamma(1.2, 2.0, n),
        "nexus_agent_cpu_percent": rng.gamma(1.0, 0.6, n),
    }
    for metric, values in flat.items():
        store.append_many(metric, {}, every5, values)
    for i in range(connections):
        store.append_many(CONNECTIONS, {"state": f"S{i:02d}"}, every5, rng.poisson(2, n) * 1.0)
    for status in ("busy", "idle", "retry"):
        store.append_many("opencode_sessions", {"status": status}, every5, rng.poisson(1, n) * 1.0)
    every1 = np.arange(end - days * DAY, end - 30, 1.0)
    labels = {"path": "/global/health", "outcome": "ok"}
    durations = rng.gamma(2.0, 0.002, len(every1))
    store.append_many("opencode_request_duration_seconds", labels, every1, durations)
    store.close()


class Agent:
    """A real agent subprocess (and the server it runs) in ``env``."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nexus_ops", "agent", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.ps = psutil.Process(self.proc.pid)
        self.client = connect(env, self.proc)

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / MB

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


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


def settle(agent: Agent, seconds: float) -> float:
    """The agent's idle CPU rate (seconds a second) over ``seconds``."""
    cpu, wall = agent.cpu(), time.monotonic()
    time.sleep(seconds)
    return (agent.cpu() - cpu) / (time.monotonic() - wall)


def refresh_cost(agent: Agent, idle_rate: float, n: int) -> tuple[float, float, float]:
    """(agent ms, console ms, first refresh's console ms) per refresh of the Metrics tab."""
    panel = MetricsPanel(PanelContext(client=agent.client))
    try:
        kernel = time.process_time()
        panel.refresh()
        first = time.process_time() - kernel
        cpu, wall, kernel = agent.cpu(), time.monotonic(), time.process_time()
        for _ in range(n):
            panel.refresh()
        kernel = time.process_time() - kernel
        used = agent.cpu() - cpu - idle_rate * (time.monotonic() - wall)
        return max(0.0, used) / n * 1000, kernel / n * 1000, first * 1000
    finally:
        panel.close()


def console_session(agent: Agent, seconds: float) -> int:
    """A console left open: the Metrics tab refreshed every 0.5 s, through every range."""
    panel = MetricsPanel(PanelContext(client=agent.client))
    refreshes, spans = 0, list(RANGES.values())
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            panel.span = spans[(refreshes // 10) % len(spans)]
            panel.refresh()
            refreshes += 1
            time.sleep(0.5)
    finally:
        panel.close()
    return refreshes


def floor_loop(env: dict[str, str], agent: Agent, interval: str) -> psutil.Process:
    settings = load_settings(env)
    password = Layout(settings.home).server_password_file.read_text().strip()
    status = agent.client.status()
    args = ["127.0.0.1", str(settings.opencode_port), settings.opencode_username, password]
    args += [str(status.pid), interval]
    proc = subprocess.Popen([sys.executable, "-c", FLOOR, *args], env=env)
    return psutil.Process(proc.pid)


def idle_cpu(env: dict[str, str], agent: Agent, interval: str, seconds: float) -> None:
    floor = floor_loop(env, agent, interval)
    try:
        time.sleep(3)  # both past their start
        a0, f0, wall = agent.cpu(), sum(floor.cpu_times()[:2]), time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - wall
        agent_pct = (agent.cpu() - a0) / elapsed * 100
        floor_pct = (sum(floor.cpu_times()[:2]) - f0) / elapsed * 100
    finally:
        floor.terminate()
        floor.wait(timeout=10)
    print(
        f"idle CPU, sampling every {interval} s:  agent {agent_pct:5.2f} %   floor loop"
        f" {floor_pct:5.2f} %   ratio {agent_pct / max(floor_pct, 1e-9):4.1f}  ({elapsed:.0f} s)"
    )


def query_times(folder: Path) -> None:
    """Query time of each range at 2,000 points over a year of history."""
    now = time.time()
    store = SampleStore(folder / "year.db", clock=lambda: now)
    old = np.arange(now - 365 * DAY, now - 2 * DAY, 60.0)  # what the rollups keep
    recent = np.arange(now - 2 * DAY, now, 5.0)
    for times in (old, recent):
        store.append_many("m", {}, times, np.sin(times / 3600.0) * 100 + 200)
    store.flush()
    store.enforce_retention(now)
    backend = SQLiteBackend(store, clock=lambda: now)
    for name, span in (("1 h", 3600.0), ("1 d", DAY), ("30 d", 30 * DAY), ("365 d", 365 * DAY)):
        query = MetricQuery("m", start=now - span, end=now, max_points=2000)
        runs = []
        for _ in range(7):
            started = time.perf_counter()
            points = backend.read(query)
            runs.append(time.perf_counter() - started)
        print(
            f"query {name:>5} at 2,000 points: {statistics.median(runs) * 1000:6.1f} ms"
            f"  ({backend.resolution(query)}, {sum(len(p) for p in points)} points)"
        )
    store.close()


def run(args: argparse.Namespace, work: Path) -> None:
    binary = opencode_binary()
    if binary is None:
        raise SystemExit("no OpenCode binary: run `make opencode` or set NEXUS_OPENCODE_BIN")
    env = {**private_env(work, binary), "NEXUS_MEMORY_LIMIT_MB": "0"}
    metrics_db = Path(env["NEXUS_HOME"]) / "metrics.db"
    Path(env["NEXUS_HOME"]).mkdir(parents=True, exist_ok=True)
    synthesize(metrics_db, time.time(), connections=4)
    agent = Agent(env)
    try:
        if not agent.client.start(wait=True).ok:
            raise SystemExit("the server did not start")
        idle_rate = settle(agent, args.settle)
        print(f"agent RSS, idle:                      {agent.rss_mb():6.1f} MB")
        costs = {4: refresh_cost(agent, idle_rate, args.refreshes)}
        for span in RANGES.values():
            agent.client.query_metrics(CONNECTIONS, start=span)
        print(f"agent RSS, after a console's queries: {agent.rss_mb():6.1f} MB")
        count = console_session(agent, args.session)
        print(
            f"agent RSS, after a console session:  {agent.rss_mb():6.1f} MB"
            f"  ({count} refreshes in {args.session:.0f} s)"
        )
        idle_cpu(env, agent, "5", args.idle)
    finally:
        agent.stop()
    synthesize_more(metrics_db)
    agent = Agent(env)
    try:
        costs[64] = refresh_cost(agent, settle(agent, args.settle), args.refreshes)
    finally:
        agent.stop()
    agent = Agent({**env, "NEXUS_METRICS_INTERVAL": "1"})
    try:
        time.sleep(5)  # past its start
        idle_cpu(env, agent, "1", args.idle)
    finally:
        agent.client.stop()
        agent.stop()
    for series, (agent_ms, kernel_ms, first_ms) in costs.items():
        print(
            f"Metrics refresh, {series:2d} connection series: agent {agent_ms:5.1f} ms CPU,"
            f" console {kernel_ms:5.1f} ms CPU (first refresh {first_ms:.0f} ms)"
        )
    query_times(work)


def synthesize_more(path: Path) -> None:
    """60 more connection series, for 64 in all (the agent is stopped meanwhile)."""
    store = SampleStore(path)
    end = time.time()
    times = np.arange(end - 2 * DAY, end - 30, 5.0)
    rng = np.random.default_rng(5)
    for i in range(4, 64):
        store.append_many(
            CONNECTIONS, {"state": f"S{i:02d}"}, times, rng.poisson(2, len(times)) * 1.0
        )
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows")
    found = parser.parse_args()
    found.settle = 10.0 if found.quick else 20.0
    found.refreshes = 10 if found.quick else 20
    found.session = 20.0 if found.quick else 60.0
    found.idle = 30.0 if found.quick else 90.0
    with tempfile.TemporaryDirectory(prefix="nexus-agent-cost-") as folder:
        run(found, Path(folder))


if __name__ == "__main__":
    main()
