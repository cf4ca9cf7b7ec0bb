"""What the entry's check costs: ``GET /entry/check`` is asked before every request a
paired device sends through the entry (every page, asset and event stream).

    python benchmarks/bench_entry_check.py              # 2,000 checks of each kind
    python benchmarks/bench_entry_check.py --checks 500

With the real agent (not supervising a server: the check does not ask it) in a
private HOME, pairs a device, then prints the latency (p50, p95, p99) of checks with
the device's cookie, with a revoked one and with none, one after another on one
keep-alive connection, and the agent's CPU per check.

Target: under 2 ms of agent CPU per check (on a machine whose cores are busy the
latency is mostly the wait for one: read it beside ``uptime``'s load).
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def start_agent(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], AgentClient]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_ops", "agent", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = AgentClient.from_settings(load_settings(env), timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.health()
            return proc, client
        except NexusOpsError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the agent did not answer within 30 s")


def pair(client: AgentClient, http: httpx.Client) -> tuple[str, str]:
    """A new device: its id and its session cookie."""
    code = client.create_pairing("bench").code
    done = http.post("/_nexus/pair", data={"code": code}, follow_redirects=False)
    return done.headers["x-nexus-device"], done.headers["set-cookie"].split(";")[0].split("=")[1]


def timed(http: httpx.Client, cookie: str | None, n: int, status: int) -> list[float]:
    headers = {"X-Forwarded-Uri": "/session", "X-Forwarded-For": "203.0.113.7"}
    if cookie:
        headers["Cookie"] = f"nexus_device={cookie}"
    times = []
    for _ in range(n):
        start = time.perf_counter()
        answer = http.get("/entry/check", headers=headers)
        times.append(time.perf_counter() - start)
        assert answer.status_code == status, answer.text
    return times


def report(what: str, times: list[float], cpu: float) -> None:
    q = statistics.quantiles(times, n=100)
    print(
        f"{what:<16} p50 {q[49] * 1e3:6.2f} ms  p95 {q[94] * 1e3:6.2f} ms  "
        f"p99 {q[98] * 1e3:6.2f} ms  agent CPU {cpu / len(times) * 1e3:5.2f} ms/check"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=2000)
    args = parser.parse_args()
    binary = opencode_binary() or Path("/nonexistent/opencode")
    with tempfile.TemporaryDirectory(prefix="nexus-bench-entry-") as root:
        env = private_env(Path(root), binary)
        proc, client = start_agent(env)
        try:
            agent = psutil.Process(proc.pid)
            with httpx.Client(base_url=client.base_url, timeout=10) as http:
                (_, live), (gone, revoked) = pair(client, http), pair(client, http)
                client.revoke_device(gone)
                timed(http, live, 50, 200)  # warm up
                for what, cookie, status in (
                    ("live session", live, 200),
                    ("revoked", revoked, 401),
                    ("no cookie", None, 401),
                ):
                    before = sum(agent.cpu_times()[:2])
                    times = timed(http, cookie, args.checks, status)
                    report(what, times, sum(agent.cpu_times()[:2]) - before)
        finally:
            client.close()
            os.killpg(proc.pid, 15)
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
