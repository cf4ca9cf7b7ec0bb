"""A real Prometheus server for tests and benchmarks: free port, private storage, cleaned up."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_config(target: str, token_file: Path, interval: str = "1s") -> dict[str, object]:
    """A Prometheus config that scrapes one agent with its bearer token."""
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {
                "job_name": "nexus-ops",
                "scrape_interval": interval,
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }


@dataclass
class PrometheusServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def running_prometheus(
    folder: Path,
    config: dict[str, object],
    storage: Path | None = None,
    retention: str = "30d",
    timeout: float = 60.0,
) -> Iterator[PrometheusServer]:
    """Start ``prometheus`` on a free port with ``config``; stop it (and its group) after."""
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    storage = storage or folder / "data"
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config_file}",
                f"--storage.tsdb.path={storage}",
                f"--storage.tsdb.retention.time={retention}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-admin-api",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait_ready(server, timeout)
        yield server
    finally:
        server.stop()


def _wait_ready(server: PrometheusServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{server.log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"prometheus not ready in {timeout} s:\n{server.log.read_text()[-3000:]}")


def instant(url: str, expr: str) -> list[dict[str, object]]:
    """The result of an instant query (empty when nothing matches)."""
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return list(body["data"]["result"])
