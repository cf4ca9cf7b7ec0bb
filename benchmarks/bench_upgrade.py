"""Downtime of an upgrade and of a rollback, against a plain swap of the binary.

Against the real OpenCode (1.15.13, whose database 1.18.33 migrates, and 1.18.33)
under a real agent in a private HOME, a thread asks ``GET /global/health`` every
50 ms (1 s timeout) and the downtime is the longest stretch without a healthy
answer during each operation:

- ``upgrade``: ``nexus-ops opencode upgrade 1.18.33 --probation 0`` (drain, backup,
  stop, activate, start, gate);
- ``rollback``: ``nexus-ops opencode rollback`` (stop, database aside, restore,
  previous version, start, check);
- ``plain swap``: stop, ``opencode use 1.18.33``, start, with nothing checked.

Targets: upgrade downtime <= 1.5x the plain swap; rollback under 30 s.

Usage: python benchmarks/bench_upgrade.py [--sessions 20] [--old-prefix DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from bench_supervisor import environment as supervisor_environment

from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.errors import NexusOpsError
from nexus_ops.opencode import native_binary_in
from nexus_ops.paths import Layout
from nexus_ops.versions.install import install_version

ROOT = Path(__file__).resolve().parent.parent
OLD, NEW = "1.15.13", "1.18.33"


def environment(root: Path) -> dict[str, str]:
    """A private HOME (as the supervisor benchmark makes it) running the active version."""
    env = supervisor_environment(root, Path("unused"))
    del env["NEXUS_OPENCODE_BIN"]
    return {**env, "NEXUS_UPGRADE_PROBATION": "0"}


def lay_out(node_modules: Path, folder: Path) -> None:
    shutil.copytree(node_modules, folder / "node_modules", copy_function=os.link, symlinks=True)


class Downtime:
    """Polls the server's health every 50 ms; the longest stretch without an answer."""

    def __init__(self, url: str, auth: tuple[str, str]) -> None:
        self.url, self.auth = url, auth
        self.longest = 0.0
        self._down_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Downtime:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._down_since is not None:
            self.longest = max(self.longest, time.perf_counter() - self._down_since)

    def _run(self) -> None:
        with httpx.Client(auth=self.auth, timeout=1.0) as http:
            while not self._stop.is_set():
                now = time.perf_counter()
                try:
                    ok = http.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok and self._down_since is not None:
                    self.longest = max(self.longest, now - self._down_since)
                    self._down_since = None
                elif not ok and self._down_since is None:
                    self._down_since = now
                self._stop.wait(max(0.0, 0.05 - (time.perf_counter() - now)))


def nexus(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nexus_ops", *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"nexus-ops {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def wait_healthy(client: AgentClient, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.status()
        if status.healthy and status.version == version:
            return
        time.sleep(0.1)
    raise SystemExit(f"OpenCode {version} did not come up")


def timed(env: dict[str, str], probe: Downtime, *args: str) -> float:
    started = time.perf_counter()
    with probe:
        nexus(env, *args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20, help="sessions made before")
    parser.add_argument("--old-prefix", type=Path, default=ROOT / ".cache" / f"opencode-{OLD}")
    args = parser.parse_args()
    prefix = Path(os.environ.get("NXOPS_TEST_OPENCODE_PREFIX", ROOT / ".cache" / "opencode"))
    new_modules = prefix / "node_modules"
    if native_binary_in(args.old_prefix / "node_modules") is None:
        print(f"installing OpenCode {OLD} into {args.old_prefix} ...", file=sys.stderr)
        args.old_prefix.parent.mkdir(parents=True, exist_ok=True)
        built = install_version(OLD, args.old_prefix.parent, lambda line: None)
        built.rename(args.old_prefix)
    with tempfile.TemporaryDirectory(prefix="nx-bench-upgrade-") as tmp:
        env = environment(Path(tmp))
        versions = Path(env["NEXUS_HOME"]) / "opencode"
        lay_out(args.old_prefix / "node_modules", versions / OLD)
        lay_out(new_modules, versions / NEW)
        nexus(env, "opencode", "use", OLD)
        agent = subprocess.Popen(
            [sys.executable, "-m", "nexus_ops", "agent", "run"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            run(env, args.sessions)
        finally:
            subprocess.run(
                [sys.executable, "-m", "nexus_ops", "server", "stop"], env=env, capture_output=True
            )
            agent.terminate()
            agent.wait(timeout=30)


def run(env: dict[str, str], sessions: int) -> None:
    settings = load_settings(env)
    client = AgentClient.from_settings(settings, timeout=120)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.health()
            break
        except NexusOpsError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    client.start()
    wait_healthy(client, OLD)
    password = Layout(settings.home).server_password_file.read_text().strip()
    auth = ("opencode", password)
    url = settings.opencode_base_url
    for _ in range(sessions):
        httpx.post(f"{url}/session", json={}, auth=auth, timeout=10).raise_for_status()
    health = f"{url}/global/health"

    up = Downtime(health, auth)
    upgrade_total = timed(env, up, "opencode", "upgrade", NEW, "--probation", "0")
    back = Downtime(health, auth)
    rollback_total = timed(env, back, "opencode", "rollback")
    wait_healthy(client, OLD)
    plain = Downtime(health, auth)
    started = time.perf_counter()
    with plain:
        client.stop()
        nexus(env, "opencode", "use", NEW)
        client.start()
        wait_healthy(client, NEW)
    plain_total = time.perf_counter() - started

    ratio = up.longest / plain.longest if plain.longest else float("inf")
    print(f"sessions before the upgrade: {sessions}")
    print(f"{'operation':<12}{'downtime s':>12}{'total s':>10}")
    print(f"{'plain swap':<12}{plain.longest:>12.2f}{plain_total:>10.2f}")
    print(f"{'upgrade':<12}{up.longest:>12.2f}{upgrade_total:>10.2f}")
    print(f"{'rollback':<12}{back.longest:>12.2f}{rollback_total:>10.2f}")
    print(f"upgrade downtime / plain swap: {ratio:.2f} (target <= 1.5)")
    print(f"rollback total: {rollback_total:.1f} s (target < 30)")


if __name__ == "__main__":
    main()
