"""Secrets never show: every CLI command and every API call, with known secrets planted.

The server password, the agent token, a webhook's URL password, query token, bearer
token and header all contain PLANTED; after running every command of `nexus-ops` and
calling every route of the agent against the real server, none appears in any stdout,
stderr, API body or header, the journal, the logs, `config show`, or the notebooks the
runbooks left.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alert_receiver import Receiver, receiver
from conftest import RunningAgent, free_port, nexus_cli, start_agent, wait_for

from nexus_ops.cli import build_parser

pytestmark = pytest.mark.opencode

MARK = "PLANTED"


def planted(name: str) -> str:
    return f"{MARK}{name}{secrets.token_hex(12)}"


PASSWORD = planted("serverpw")
TOKEN = planted("agenttoken")
HOOK_PASSWORD = planted("hookpw")
HOOK_QUERY = planted("hookquery")
HOOK_TOKEN = planted("hooktoken")
HOOK_HEADER = planted("hookheader")


def leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every command a user can run, e.g. 'server start'."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found = [" ".join(prefix)] if prefix and (not subs or parser.get_default("handler")) else []
    for action in subs:
        for name, sub in action.choices.items():
            found += leaves(sub, (*prefix, name))
    return found


@pytest.fixture
def hooks() -> Iterator[tuple[Receiver, Receiver]]:
    with receiver(userinfo=f"hook:{HOOK_PASSWORD}") as good, receiver(final=500) as bad:
        yield good, bad


@pytest.fixture
def planted_agent(
    nexus_env: dict[str, str], tmp_path: Path, hooks: tuple[Receiver, Receiver]
) -> Iterator[RunningAgent]:
    good, bad = hooks
    home = Path(nexus_env["NEXUS_HOME"])
    (home / "secrets").mkdir(parents=True, mode=0o700)
    for name, value in (("opencode.password", PASSWORD), ("agent.token", TOKEN)):
        (home / "secrets" / name).write_text(value + "\n")
        (home / "secrets" / name).chmod(0o600)
    rules = tmp_path / "alerts.yml"
    rules.write_text(
        "rules:\n"
        "  - {name: AlwaysOn, metric: opencode_server_status, op: '>=', value: 0}\n"
        "webhooks:\n"
        f"  - url: {bad.url}?token={HOOK_QUERY}\n"
        f"    headers: {{X-Api-Key: {HOOK_HEADER}}}\n"
        f"  - url: http://hook:{HOOK_PASSWORD}@127.0.0.1:{free_port()}/closed\n"
    )
    rules.chmod(0o600)
    nexus_env.update(
        NEXUS_ALERTS_FILE=str(rules),
        NEXUS_ALERT_WEBHOOK_URLS=f"{good.url}?token={HOOK_QUERY}",
        NEXUS_ALERT_WEBHOOK_TOKEN=HOOK_TOKEN,
        NEXUS_ALERT_WEBHOOK_RETRIES="1",
        NEXUS_ALERT_GROUP_WAIT="0",
        NEXUS_ALERT_INTERVAL="0.5",
        NEXUS_METRICS_INTERVAL="1",
        NEXUS_LOG_LEVEL="DEBUG",
    )
    running = start_agent(nexus_env)
    yield running
    running.client.close()
    running.stop()


def invocations(tmp: Path, backup_id: str, run_id: str) -> dict[str, list[list[str]]]:
    """How to run each command (several ways for some); the agent is stopped last."""
    return {
        "config show": [["config", "show"], ["config", "show", "--json"]],
        "config check": [["config", "check"]],
        "opencode install": [
            ["opencode", "install", "--version", "0.0.0-none", "--prefix", str(tmp / "npm")]
        ],
        "opencode path": [["opencode", "path"]],
        "opencode versions": [["opencode", "versions"], ["opencode", "versions", "--json"]],
        "opencode upgrade": [
            ["opencode", "upgrade", "1.18.33", "--dry-run"],
            ["opencode", "upgrade", "--status"],
        ],
        "opencode rollback": [["opencode", "rollback"]],  # no upgrade to roll back: refused
        "opencode use": [["opencode", "use", "0.0.0-none"]],  # not installed: refused
        # connect --show-password prints the password on purpose; masked, it never does.
        "opencode connect": [["opencode", "connect"]],
        "opencode attach": [["opencode", "attach", "--help"]],  # the TUI needs a terminal
        "agent": [["agent"]],  # a second agent: refused, the port is taken
        "agent run": [["agent", "run"]],
        "agent start": [["agent", "start"]],
        "agent status": [["agent", "status"]],
        "server start": [["server", "start"]],
        "server restart": [["server", "restart"]],
        "server status": [["server", "status"], ["server", "status", "--json"]],
        "server logs": [["server", "logs", "-n", "500"]],
        "events": [["events", "--limit", "1000"], ["events", "--json", "--limit", "1000"]],
        "demo": [["demo", "--sessions", "0"]],  # a load that cannot run: refused
        "console": [["console"]],  # run by run_briefly: it may stay in the foreground
        "alerts list": [["alerts", "list"], ["alerts", "list", "--json"]],
        "alerts export-prometheus": [["alerts", "export-prometheus"]],
        "security check": [["security", "check"], ["security", "check", "--json"]],
        "security audit": [["security", "audit", "--out", str(tmp / "audit"), "--json"]],
        "backup create": [["backup", "create", "--include-nexus", "--json"]],
        "backup list": [["backup", "list"], ["backup", "list", "--json"]],
        "backup verify": [["backup", "verify", "--json"]],
        "backup restore": [["backup", "restore", backup_id, "--to", str(tmp / "restored")]],
        "backup prune": [["backup", "prune", "--dry-run", "--json"]],
        "runbook list": [["runbook", "list", "--json"]],
        "runbook show": [["runbook", "show", "security_audit"]],
        "runbook run": [
            ["runbook", "run", "security_audit", "-p", "run_audit", "false", "--json"],
            ["runbook", "run", "application_failure", "--json"],
        ],
        "runbook runs": [["runbook", "runs", "--json"]],
        "runbook show-run": [
            ["runbook", "show-run", run_id],
            ["runbook", "show-run", run_id, "--html", str(tmp / "run.html")],
        ],
        "entry status": [["entry", "status"], ["entry", "status", "--json"]],
        "entry ca": [["entry", "ca"]],  # the entry is off: no CA yet, said so
        "entry check": [["entry", "check"]],
        "pair": [["pair", "--name", "phone"], ["pair", "--json"]],
        "devices": [["devices"], ["devices", "--json"]],
        "devices revoke": [["devices", "revoke", "--all"]],
        "server stop": [["server", "stop"]],
        "agent stop": [["agent", "stop"]],
    }


def api_calls(
    backup_id: str, run_id: str, tmp: Path, device: tuple[str, str]
) -> dict[tuple[str, str], dict[str, object]]:
    """How to call each route of the OpenAPI document (``device``: a paired one's id, cookie)."""
    device_id, cookie = device
    return {
        ("GET", "/health"): {},
        ("GET", "/ready"): {},
        ("GET", "/metrics"): {},
        ("GET", "/api/v1/status"): {},
        ("POST", "/api/v1/server/start"): {},
        ("POST", "/api/v1/server/restart"): {},
        ("POST", "/api/v1/server/stop"): {},
        ("GET", "/api/v1/events"): {"params": {"limit": 10000}},
        ("GET", "/api/v1/logs"): {"params": {"lines": 10000}},
        ("GET", "/api/v1/metrics/query"): {"params": {"metric": "opencode_server_status"}},
        ("POST", "/api/v1/metrics/queries"): {
            "json": {"queries": [{"metric": "opencode_server_status"}]}
        },
        ("GET", "/api/v1/metrics/names"): {},
        ("GET", "/api/v1/metrics/store"): {},
        ("GET", "/api/v1/usage"): {},
        ("GET", "/api/v1/opencode/upgrade"): {},
        ("POST", "/api/v1/opencode/upgrade"): {"json": {"version": "1.18.33", "dry_run": True}},
        ("POST", "/api/v1/opencode/rollback"): {},  # no upgrade to roll back: refused
        ("GET", "/api/v1/config"): {},
        ("GET", "/api/v1/alerts"): {},
        ("GET", "/api/v1/backups"): {},
        ("POST", "/api/v1/backups"): {"json": {"include_nexus": True}},
        ("GET", "/api/v1/backups/schedule"): {},
        ("POST", "/api/v1/backups/prune"): {},
        ("GET", f"/api/v1/backups/{backup_id}"): {},
        ("POST", f"/api/v1/backups/{backup_id}/verify"): {},
        ("POST", f"/api/v1/backups/{backup_id}/restore"): {
            "json": {"to_folder": str(tmp / "api-restored")}
        },
        ("GET", "/api/v1/runbooks"): {},
        ("GET", "/api/v1/runbooks/security_audit"): {},
        ("POST", "/api/v1/runbooks/security_audit/runs"): {
            "json": {"parameters": {"run_audit": False}}
        },
        ("GET", "/api/v1/runs"): {},
        ("GET", f"/api/v1/runs/{run_id}"): {},
        ("GET", f"/api/v1/runs/{run_id}/notebook"): {},
        ("GET", f"/api/v1/runs/{run_id}/html"): {},
        ("GET", "/api/v1/openapi.json"): {},
        ("GET", "/entry/check"): {"headers": {"Cookie": f"nexus_device={cookie}"}},
        ("GET", "/_nexus/pair"): {"params": {"code": "2222-2222"}},
        ("POST", "/_nexus/pair"): {"data": {"code": "2222-2222", "name": "x"}},
        ("POST", "/api/v1/pairings"): {"json": {"name": "tablet"}},
        ("GET", "/api/v1/devices"): {},
        ("DELETE", f"/api/v1/devices/{device_id}"): {},
        ("DELETE", "/api/v1/devices"): {},
        ("POST", "/_nexus/logout"): {"headers": {"Cookie": f"nexus_device={cookie}"}},
    }


def run_briefly(env: dict[str, str], argv: list[str], seconds: float = 60.0) -> tuple[str, str]:
    """Run a command that may serve in the foreground until it prints a URL, then stop it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus_ops", *argv],
            env=env,
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + seconds
        while proc.poll() is None and time.monotonic() < deadline:
            out.seek(0)
            if "http://" in out.read():
                time.sleep(1.0)  # let it finish its first lines
                break
            time.sleep(0.2)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0)
        err.seek(0)
        return out.read(), err.read()


def concrete(path: str, backup_id: str, run_id: str, device_id: str) -> str:
    path = path.replace("{backup_id}", backup_id).replace("{run_id}", run_id)
    return path.replace("{name}", "security_audit").replace("{device_id}", device_id)


def paired_device(agent: RunningAgent) -> tuple[str, str]:
    """Pair a device through the agent's entry pages: its id and session cookie."""
    code = agent.client.json("POST", "/api/v1/pairings", json={})["code"]
    done = httpx.post(
        f"{agent.client.base_url}/_nexus/pair", data={"code": code}, follow_redirects=False
    )
    assert done.status_code == 303, done.text
    cookie = done.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    return done.headers["x-nexus-device"], cookie


def assert_clean(where: str, text: str) -> None:
    found = re.findall(rf"{MARK}\w+", text)
    assert not found, f"a secret shows in {where}: {found[:3]}"


def test_no_secret_in_any_output(
    planted_agent: RunningAgent, hooks: tuple[Receiver, Receiver], tmp_path: Path
) -> None:
    agent, (good, bad) = planted_agent, hooks
    env = agent.env
    assert agent.client.start().ok
    # The planted secrets are really in use: the server wants the planted password...
    health = f"http://127.0.0.1:{agent.settings.opencode_port}/global/health"
    assert httpx.get(health, auth=("opencode", PASSWORD), timeout=5).status_code == 200
    assert httpx.get(health, timeout=5).status_code == 401
    # ...and the webhooks got (or were refused) notifications with the planted credentials.
    wait_for(lambda: good.alerts("firing") and len(bad.received) >= 2, 30, what="deliveries")
    assert good.received[0].headers["Authorization"] == f"Bearer {HOOK_TOKEN}"
    assert HOOK_QUERY in good.received[0].path
    assert bad.received[0].headers["X-Api-Key"] == HOOK_HEADER
    wait_for(lambda: agent.client.events(kinds=["alert_delivery_failed"]), 30, what="failures")

    # Every route of the API.
    created = agent.client.json("POST", "/api/v1/backups", json={})
    run = agent.client.json(
        "POST", "/api/v1/runbooks/security_audit/runs", json={"parameters": {"run_audit": False}}
    )
    wait_for(lambda: agent.client.json("GET", f"/api/v1/runs/{run['id']}")["status"] != "running",
             120, what="the runbook run")  # fmt: skip
    device = paired_device(agent)
    calls = api_calls(created["id"], run["id"], tmp_path, device)
    spec = agent.client.openapi()
    documented = {
        (method.upper(), concrete(path, created["id"], run["id"], device[0]))
        for path, operations in spec["paths"].items()
        for method in operations
    }
    missing = documented - set(calls)
    assert not missing, f"add these routes to api_calls(): {sorted(missing)}"
    for (method, path), kwargs in calls.items():
        try:
            response = agent.client._http.request(method, path, timeout=180, **kwargs)  # type: ignore[arg-type]
        except httpx.TimeoutException:
            pytest.fail(f"{method} {path} took longer than 180 s")
        assert response.status_code < 500, (method, path, response.text[:300])
        assert_clean(f"{method} {path}", response.text + str(dict(response.headers)))
    anonymous = httpx.get(f"{agent.client.base_url}/api/v1/config", timeout=5)
    assert anonymous.status_code == 401
    assert_clean("a 401", anonymous.text + str(dict(anonymous.headers)))
    assert agent.client.start().ok

    # Every command of the CLI, the agent stopped last.
    backup_id = created["id"]
    runs = invocations(tmp_path, backup_id, run["id"])
    commands = leaves(build_parser())
    assert sorted(commands) == sorted(runs), "give every command an invocation in invocations()"
    cli_env = {**env, "HTTPS_PROXY": f"http://127.0.0.1:{free_port()}"}  # the audit offline
    for argvs in runs.values():
        for argv in argvs:
            if argv == ["console"]:
                stdout, stderr = run_briefly(cli_env, argv)
            else:
                done = nexus_cli(cli_env, *argv, timeout=600)
                stdout, stderr = done.stdout, done.stderr
            assert "Traceback" not in stderr, (argv, stderr[-2000:])
            assert_clean(f"`nexus-ops {' '.join(argv)}`", stdout + stderr)
            if argv[:2] == ["config", "show"]:
                assert "hook:********@127.0.0.1" in stdout
    assert agent.proc.wait(timeout=30) in (0, -15)  # `agent stop` stopped it (SIGTERM)

    # What stays on disk: the journal, logs, run notebooks, audit reports, restored files.
    home = Path(env["NEXUS_HOME"])
    with sqlite3.connect(home / "nexus.db") as db:
        journal = "\n".join(str(row) for row in db.execute("SELECT * FROM events"))
        state = "\n".join(str(row) for row in db.execute("SELECT * FROM state"))
    assert "alert_delivery_failed" in journal and "alert" in journal
    assert_clean("the journal", journal + state)
    scanned = 0
    for path in [*home.rglob("*"), *tmp_path.rglob("*")]:
        if path.is_file() and "secrets" not in path.parts and path.suffix not in (".gz", ".db"):
            if path.name.startswith(("metrics.db", "nexus.db")) or path == tmp_path / "alerts.yml":
                continue  # compressed samples; the database is read above; the operator's file
            assert_clean(str(path), path.read_text(errors="replace"))
            scanned += 1
    assert scanned >= 10
    assert (home / "logs" / "opencode.log").stat().st_size > 0
    assert list((home / "runs").glob("*.ipynb"))
