"""The agent's HTTP API: tokens, probes, OpenAPI and Prometheus exposition."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import RunningAgent, private_env, start_agent, wait_for
from fastapi.testclient import TestClient

from nexus_ops.agent import AgentServer, check_bind, create_app
from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.errors import SecurityError, Unauthorized
from nexus_ops.paths import Layout

PUBLIC = {"/health", "/ready", "/entry/check", "/_nexus/pair", "/_nexus/logout"}


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """The agent's app in-process (no supervision), through httpx."""
    settings = load_settings(private_env(tmp_path))
    app = create_app(settings, manage=False)
    token = Layout(settings.home).agent_token_file.read_text().strip()
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, token


def routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) of the API, read from its OpenAPI document."""
    spec = client.app.openapi()  # type: ignore[attr-defined]
    found = [("GET", "/api/v1/openapi.json")]
    for path, operations in spec["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        found += [(method.upper(), concrete) for method in operations]
    return found


def test_every_route_but_the_probes_needs_the_token(app_client: tuple[TestClient, str]) -> None:
    client, token = app_client
    checked = 0
    for method, path in routes(client):
        if path in PUBLIC:
            continue
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"}):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert token not in response.text
        checked += 1
    assert checked >= 8


def test_probes_need_no_token(app_client: tuple[TestClient, str]) -> None:
    client, _ = app_client
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json() == {
        "ready": False,
        "state": "stopped",
        "detail": "",
    }


def test_token_file_is_private_and_strong(tmp_path: Path) -> None:
    settings = load_settings(private_env(tmp_path))
    create_app(settings, manage=False)
    layout = Layout(settings.home)
    assert layout.agent_token_file.stat().st_mode & 0o777 == 0o600
    assert layout.secrets.stat().st_mode & 0o777 == 0o700
    assert len(layout.agent_token_file.read_text().strip()) >= 40


def test_openapi_document_describes_the_api(app_client: tuple[TestClient, str]) -> None:
    client, token = app_client
    spec = client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"}).json()
    assert spec["openapi"].startswith("3.")
    for path in ("/health", "/ready", "/api/v1/status", "/api/v1/server/start", "/api/v1/events"):
        assert path in spec["paths"], path


def test_client_maps_a_wrong_token_and_a_missing_agent(app_client: tuple[TestClient, str]) -> None:
    client, _ = app_client
    wrong = AgentClient("http://127.0.0.1", "nope", transport=client._transport)  # type: ignore[attr-defined]
    with pytest.raises(Unauthorized, match="refused the token"):
        wrong.status()
    nobody = AgentClient("http://127.0.0.1:9", "t", timeout=1.0)
    with pytest.raises(Exception, match="nexus-ops agent start"):
        nobody.status()


def test_bad_values_get_the_error_shape_naming_the_field(
    app_client: tuple[TestClient, str],
) -> None:
    client, token = app_client
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    cases = [
        ("POST", "/api/v1/runbooks/backup/runs", '{"who": "\\ud800"}', "who="),
        ("POST", "/api/v1/runbooks/backup/runs", '{"parameters": {"\\udfff": 1}}', "parameters"),
        ("POST", "/api/v1/runbooks/backup/runs", '{"parameters": {"n": 1e999999}}', "parameters.n"),
        ("POST", "/api/v1/runbooks/backup/runs", '{"parameters": {"n": [NaN]}}', "parameters.n.0"),
        ("POST", "/api/v1/backups", '{"include_nexus": 1e999999}', "include_nexus="),
        ("POST", "/api/v1/backups/x/restore", '{"parts": ["\\ud800"]}', "parts.0="),
        ("GET", f"/api/v1/events?after_id={2**64}", None, "after_id="),
        ("GET", "/api/v1/events?since=nan", None, "since="),
        ("GET", "/api/v1/metrics/query?metric=x&start=nan", None, "start="),
        ("GET", "/api/v1/metrics/query?metric=x&end=Infinity", None, "end="),
        ("POST", "/api/v1/backups", "{not json", "the body is not JSON"),
        (
            "POST",
            "/api/v1/runbooks/application_failure/runs",
            '{"parameters": {"log_lines": 0}}',
            "parameter 'log_lines' expects int in [1..10000], got 0: below 1",
        ),
    ]
    for method, path, body, named in cases:
        response = client.request(method, path, content=body, headers=headers)
        assert response.status_code in (400, 422), (path, body, response.text)
        answer = response.json()
        assert set(answer) == {"error", "hint"} and answer["hint"], answer
        assert answer["error"].startswith(named), (named, answer)
    assert client.get("/api/v1/runs", headers=headers).json() == []


def test_the_openapi_document_declares_422s_in_the_error_shape(
    app_client: tuple[TestClient, str],
) -> None:
    client, token = app_client
    spec = client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"}).json()
    refs = {
        answer["content"]["application/json"]["schema"]["$ref"]
        for operations in spec["paths"].values()
        for operation in operations.values()
        for code, answer in operation["responses"].items()
        if code == "422"
    }
    assert refs == {"#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]


@pytest.fixture
def full_runs_folder(app_client: tuple[TestClient, str], tmp_path: Path) -> Iterator[Path]:
    """The agent's runs/ on a 64 KiB tmpfs, filled up (needs root; skipped otherwise)."""
    runs = tmp_path / "nexus" / "runs"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(runs)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with contextlib.suppress(OSError), (runs / "filler").open("wb") as filler:
            filler.write(b"x" * 1_000_000)
        yield runs
    finally:
        subprocess.run(["umount", "-l", str(runs)], check=False)


def test_a_runbook_run_on_a_full_disk_is_refused_clearly_and_not_listed(
    app_client: tuple[TestClient, str], full_runs_folder: Path
) -> None:
    client, token = app_client
    headers = {"Authorization": f"Bearer {token}"}
    refused = client.post("/api/v1/runbooks/backup/runs", json={}, headers=headers)
    assert refused.status_code == 507, refused.text
    answer = refused.json()
    assert "is full" in answer["error"] and str(full_runs_folder) in answer["error"]
    assert "free space" in answer["hint"]
    assert client.get("/api/v1/runs", headers=headers).json() == []
    assert sorted(p.name for p in full_runs_folder.iterdir()) == [".runbook.lock", "filler"]
    (full_runs_folder / "filler").unlink()  # space again: the lock was not kept
    started = client.post("/api/v1/runbooks/backup/runs", json={}, headers=headers)
    assert started.status_code == 202, started.text
    run = started.json()["id"]
    done = wait_for(
        lambda: (
            (r := client.get(f"/api/v1/runs/{run}", headers=headers).json())["status"] != "running"
            and r
        ),
        timeout=120,
    )
    assert isinstance(done, dict) and done["status"] == "succeeded", done


def test_non_loopback_bind_is_refused_without_the_flag(tmp_path: Path) -> None:
    env = private_env(tmp_path, {"NEXUS_AGENT_HOST": "0.0.0.0"})
    with pytest.raises(SecurityError, match="NEXUS_ALLOW_REMOTE"):
        check_bind(load_settings(env))
    check_bind(load_settings({**env, "NEXUS_ALLOW_REMOTE": "true"}))


@pytest.mark.opencode
def test_metrics_pass_promtool(agent: RunningAgent, tmp_path: Path) -> None:
    agent.client.start()
    # desired_running is 0 while the start runs (a planned start is no outage), 1 after
    # the first sample of the running server.
    serving = "opencode_server_desired_running 1.0"
    text = str(
        wait_for(
            lambda: "seconds_bucket" in (t := agent.client.metrics_text()) and serving in t and t
        )
    )
    for name in (
        "opencode_server_status 1.0",
        "opencode_server_starts_total 1.0",
        "opencode_server_stops_total",
        "opencode_server_uptime_seconds",
        "opencode_request_duration_seconds_bucket",
        "nexus_agent_resident_memory_bytes",
    ):
        assert name in text, name
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, text=True, capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    anonymous = httpx.get(f"{agent.client.base_url}/metrics")
    assert anonymous.status_code == 401
    agent.client.stop()  # an operator's stop: down, and not wanted up
    stopped = agent.client.metrics_text()
    assert "opencode_server_status 0.0" in stopped
    assert "opencode_server_desired_running 0.0" in stopped


def store_problems(agent: RunningAgent) -> list[str]:
    return [e.message for e in agent.client.events(kinds=["store_problem"])]


@pytest.mark.opencode
def test_stores_deleted_under_the_agent_or_corrupt_at_start_are_rebuilt_loudly(
    agent: RunningAgent,
) -> None:
    agent.client.start()
    pid = agent.client.status().pid
    home = Path(agent.env["NEXUS_HOME"])
    before = [e.id for e in agent.client.events()]
    wait_for(lambda: (home / "metrics.db").stat().st_size > 0)
    for name in ("nexus.db", "metrics.db"):
        (home / name).unlink()
    health = wait_for(lambda: len((h := agent.client.health()).problems) == 2 and h, timeout=60)
    assert getattr(health, "status", None) == "degraded"
    assert len(store_problems(agent)) == 2
    assert all("was deleted under the running agent" in p for p in store_problems(agent))
    text = agent.client.metrics_text()
    for name in ("nexus.db", "metrics.db"):
        assert f'nexus_agent_store_problems_total{{store="{name}"}} 1.0' in text, text
    assert "ERROR" in agent.log.read_text() and "was deleted" in agent.log.read_text()
    with contextlib.closing(sqlite3.connect(f"file:{home / 'nexus.db'}?mode=ro", uri=True)) as db:
        on_disk = {row[0] for row in db.execute("SELECT id FROM events")}
    assert set(before) <= on_disk  # what the next agent reads: the history was kept

    agent.stop()  # the server keeps running; the stores are damaged while no agent runs
    for name in ("nexus.db", "metrics.db"):
        (home / name).write_bytes(b"this is not a database\n" * 500)
    again = start_agent(agent.env)
    try:
        health = again.client.health()
        assert health.status == "degraded" and len(health.problems) == 2
        assert all("file is not a database" in p for p in health.problems)
        for name in ("nexus.db", "metrics.db"):
            aside = list(home.glob(f"{name}.corrupt-*Z"))
            assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
            assert any(str(aside[0]) in p for p in store_problems(again)), store_problems(again)
        status = again.client.status()
        assert status.pid == pid and status.state == "running"  # adopted: supervision goes on
        assert [e.pid for e in again.client.events(kinds=["adopt"])] == [pid]
    finally:
        again.stop()
        again.client.close()


def test_no_cross_origin_access(app_client: tuple[TestClient, str]) -> None:
    """No CORS: a page of another site can neither preflight nor read an answer."""
    client, token = app_client
    origin = {"Origin": "http://evil.example"}
    for path in ("/health", "/api/v1/status", "/api/v1/server/stop"):
        preflight = client.options(
            path,
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code in (401, 405), path
        assert not cors_headers(preflight), path
    for path in ("/health", "/api/v1/status"):
        read = client.get(path, headers={**origin, "Authorization": f"Bearer {token}"})
        assert read.status_code == 200, path
        assert not cors_headers(read), path


def cors_headers(response: httpx.Response) -> list[str]:
    return [name for name in response.headers if name.lower().startswith("access-control-")]


class CountingServer(AgentServer):
    """The agent's server, counting its ticks instead of refreshing headers."""

    ticks = 0

    async def on_tick(self, counter: int) -> bool:
        self.ticks += 1
        return self.should_exit


def test_the_agents_server_ticks_once_a_second_and_a_signal_wakes_it() -> None:
    async def run(tick: float, stop_after: float) -> int:
        server = CountingServer(uvicorn.Config(app=create_app))
        server.TICK = tick
        asyncio.get_running_loop().call_later(stop_after, server.handle_exit, signal.SIGTERM, None)
        await asyncio.wait_for(server.main_loop(), timeout=10)  # a signal not heard: timeout
        return server.ticks

    ticks = asyncio.run(run(tick=1.0, stop_after=2.5))
    assert ticks <= 5, f"{ticks} ticks in 2.5 s: uvicorn's own tick is ten a second"
    assert asyncio.run(run(tick=600.0, stop_after=0.2)) == 2, "SIGTERM ends the tick's wait"
