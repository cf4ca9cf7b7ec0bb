"""What the HTTPS entry costs and how fast it comes back, against real Caddy.

Measures, with an agent run with ``NEXUS_ENTRY=on`` in a private HOME:
- Caddy's first start, to the first TLS handshake verified with its new local CA
  (the CA, the intermediate and the leaves made), and a later start (CA kept);
- kill -9 of Caddy to a verified TLS handshake again, through the agent;
- Caddy's resident memory idle, and its CPU (% of one core) over a window.

Usage: python benchmarks/bench_entry.py [--runs 5] [--window 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from bench_supervisor import environment, free_port, poll

from nexus_ops.config import load_settings
from nexus_ops.entry.caddy import CaddyEntry
from nexus_ops.entry.tls import EntryFiles
from nexus_ops.opencode import native_binary_in
from nexus_ops.process import load_record

ROOT = Path(__file__).resolve().parent.parent


def handshake(port: int, files: EntryFiles) -> bool:
    """A TLS handshake with the entry, verified with its root."""
    if not files.root_cert.is_file():
        return False
    context = ssl.create_default_context(cafile=str(files.root_cert))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
            context.wrap_socket(raw, server_hostname="localhost"),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


def starts(root: Path, runs: int) -> tuple[float, list[float]]:
    """(first start with a new CA, later starts) in seconds, Caddy alone."""
    settings = load_settings(
        {
            "NEXUS_HOME": str(root / "alone"),
            "NEXUS_ENTRY_PORT": str(free_port()),
            "NEXUS_ENTRY_BIND": "127.0.0.1",
            "NEXUS_ENTRY_HOSTS": "localhost",
        }
    )
    files = EntryFiles.of(settings)
    times = []
    for _ in range(runs + 1):
        entry = CaddyEntry(settings)
        started = time.perf_counter()
        entry.start()
        try:
            poll(lambda: handshake(settings.entry_port, files))
            times.append(time.perf_counter() - started)
        finally:
            entry.stop()
    return times[0], times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    prefix = Path(os.environ.get("NXOPS_TEST_OPENCODE_PREFIX", ROOT / ".cache" / "opencode"))
    binary = native_binary_in(prefix / "node_modules")
    assert binary is not None, "run `make opencode` first"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first, later = starts(root, args.runs)
        print(f"caddy first start (new CA) to verified TLS: {first:.2f} s")
        print(f"caddy start (CA kept), median of {len(later)}: {statistics.median(later):.2f} s")
        env = {
            **environment(root / "agent", binary),
            "NEXUS_ENTRY": "on",
            "NEXUS_ENTRY_PORT": str(free_port()),
            "NEXUS_ENTRY_BIND": "127.0.0.1",
            "NEXUS_ENTRY_HOSTS": "localhost",
            "NEXUS_STABLE_PERIOD": "2",  # so that each kill below is a first failure
        }
        settings = load_settings(env)
        files = EntryFiles.of(settings)
        agent = subprocess.Popen(
            [sys.executable, "-m", "nexus_ops", "agent", "run"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            poll(lambda: handshake(settings.entry_port, files))
            back = []
            for _ in range(args.runs):
                time.sleep(settings.stable_period + 1)  # past the stable period: no backoff
                record = load_record(files.pidfile)
                assert record is not None
                os.kill(record.pid, signal.SIGKILL)
                started = time.perf_counter()
                poll(lambda old=record.pid: _replaced(files, old, settings.entry_port))
                back.append(time.perf_counter() - started)
            print(f"kill -9 of caddy to verified TLS again, median of {len(back)}: "
                  f"{statistics.median(back):.2f} s (max {max(back):.2f})")  # fmt: skip
            record = load_record(files.pidfile)
            assert record is not None
            caddy = psutil.Process(record.pid)
            cpu0 = sum(caddy.cpu_times()[:2])
            time.sleep(args.window)
            cpu = sum(caddy.cpu_times()[:2]) - cpu0
            print(f"caddy idle: {caddy.memory_info().rss / 2**20:.1f} MiB resident, "
                  f"{100 * cpu / args.window:.2f} % of one core")  # fmt: skip
        finally:
            agent.terminate()
            agent.wait(timeout=60)


def _replaced(files: EntryFiles, old: int, port: int) -> bool:
    record = load_record(files.pidfile)
    return record is not None and record.pid != old and handshake(port, files)


if __name__ == "__main__":
    main()
