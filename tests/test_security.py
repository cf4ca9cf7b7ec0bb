"""Security by default: token comparison, binds, the posture report and the dependency audit."""

from __future__ import annotations

import ast
import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, nexus_cli, private_env

import nexus_ops.agent
from nexus_ops.agent import check_bind
from nexus_ops.config import load_settings
from nexus_ops.errors import SecurityError
from nexus_ops.paths import Layout, read_or_create_secret
from nexus_ops.redact import MASK, mask_setting, mask_url, redact
from nexus_ops.security import posture_check, readable_by_others, token_problem
from nexus_ops.security.audit import _licence_result, _vulnerability_result
from nexus_ops.security.licences import licence_allowed


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private environment whose NEXUS_HOME has its secrets, as after a first start."""
    env = private_env(tmp_path)
    layout = Layout(Path(env["NEXUS_HOME"])).ensure()
    read_or_create_secret(layout.agent_token_file)
    read_or_create_secret(layout.server_password_file)
    yield env


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A 0755 folder straight under /tmp: every user can walk into it (pytest's are private)."""
    folder = Path(tempfile.mkdtemp(prefix="nexus-ops-open-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def item(env: dict[str, str], name: str) -> Any:
    report = posture_check(load_settings(env))
    return next(i for i in report.items if i.name == name)


# ---- tokens and binds ----------------------------------------------------------------------


def test_the_token_is_compared_in_constant_time() -> None:
    source = Path(nexus_ops.agent.__file__).read_text()
    function = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "require_token"
    )
    calls = [ast.unparse(n.func) for n in ast.walk(function) if isinstance(n, ast.Call)]
    assert "hmac.compare_digest" in calls
    compares = [n for n in ast.walk(function) if isinstance(n, ast.Compare)]
    assert not compares, "the token must never be compared with == or in"


def test_token_strength() -> None:
    assert token_problem("hunter2") is not None
    assert token_problem("a" * 64) is not None
    assert token_problem("Zx8_q2LmP0vR7sT1uW3yA5bC9dE4fG6hJ") is None


def test_a_non_loopback_bind_is_refused_without_the_flag_then_needs_a_strong_token(
    home: dict[str, str],
) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.10", "example.org"):
        with pytest.raises(SecurityError, match="NEXUS_ALLOW_REMOTE"):
            check_bind(load_settings({**home, "NEXUS_AGENT_HOST": host}), token="x" * 50)
    for host in ("127.0.0.1", "127.8.9.10", "::1", "localhost"):
        check_bind(load_settings({**home, "NEXUS_AGENT_HOST": host}), token="weak")
    remote = load_settings({**home, "NEXUS_AGENT_HOST": "0.0.0.0", "NEXUS_ALLOW_REMOTE": "true"})
    with pytest.raises(SecurityError, match=r"agent token .* 4 characters"):
        check_bind(remote, token="weak")
    check_bind(remote, token=Layout(remote.home).agent_token_file.read_text().strip())
    with pytest.raises(SecurityError, match=r"NEXUS_CONSOLE_HOST=0\.0\.0\.0"):
        check_bind(load_settings(home), host="0.0.0.0", variable="NEXUS_CONSOLE_HOST")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_agent_refuses_to_start_on_a_non_loopback_address(home: dict[str, str]) -> None:
    port = home["NEXUS_AGENT_PORT"]
    done = nexus_cli({**home, "NEXUS_AGENT_HOST": "0.0.0.0"}, "agent", "run", timeout=60)
    assert done.returncode == 1
    assert "NEXUS_AGENT_HOST=0.0.0.0 is not a loopback address" in done.stderr
    assert "NEXUS_ALLOW_REMOTE" in done.stderr and "Traceback" not in done.stderr
    token = Path(home["NEXUS_HOME"]) / "secrets" / "agent.token"
    token.write_text("short-token\n")
    allowed = {**home, "NEXUS_AGENT_HOST": "0.0.0.0", "NEXUS_ALLOW_REMOTE": "true"}
    done = nexus_cli(allowed, "agent", "run", timeout=60)
    assert done.returncode == 1
    assert "agent token" in done.stderr and "11 characters" in done.stderr
    assert "short-token" not in done.stderr + done.stdout
    assert not listening(int(port))
    report = nexus_cli(allowed, "security", "check", "--json")
    items = {i["name"]: i for i in json.loads(report.stdout)["items"]}
    assert items["agent token"]["status"] == "fail"
    assert items["bind addresses"]["status"] == "warn"


# ---- the posture report ------------------------------------------------------------------


def test_posture_passes_on_a_fresh_home_and_fails_on_a_world_readable_secret(
    home: dict[str, str],
) -> None:
    passed = nexus_cli(home, "security", "check")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "[PASS] secret files" in passed.stdout
    token = Path(home["NEXUS_HOME"]) / "secrets" / "agent.token"
    token.chmod(0o644)
    failed = nexus_cli(home, "security", "check")
    assert failed.returncode == 1
    assert "security posture of" in failed.stdout and ": FAIL" in failed.stdout
    assert "[FAIL] secret files: secrets readable by others: agent.token is 644" in failed.stdout
    assert "fix: chmod 700" in failed.stdout
    as_json = nexus_cli(home, "security", "check", "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    [bad] = [i for i in report["items"] if i["status"] == "fail"]
    assert bad["name"] == "secret files" and bad["fix"]
    secret = token.read_text().strip()
    assert secret not in failed.stdout + as_json.stdout
    token.chmod(0o600)
    (token.parent).chmod(0o755)
    assert item(home, "secret files").status == "fail"


def test_weak_secrets_and_remote_binds_fail(home: dict[str, str]) -> None:
    nexus = Path(home["NEXUS_HOME"])
    (nexus / "secrets" / "opencode.password").write_text("password\n")
    assert item(home, "server password").status == "fail"
    assert item(home, "bind addresses").status == "pass"
    assert item({**home, "NEXUS_OPENCODE_HOST": "0.0.0.0"}, "bind addresses").status == "fail"


def test_backups_readable_by_every_user_fail(open_tmp: Path) -> None:
    env = private_env(open_tmp)
    nexus = Path(env["NEXUS_HOME"])
    Layout(nexus).ensure()
    assert item(env, "data permissions").status == "pass"
    nexus.chmod(0o755)  # as an older nexus-ops left it
    (nexus / "backups").chmod(0o755)
    backup = nexus / "backups" / "20260101T000000Z.tar.gz"
    backup.write_bytes(b"auth.json inside")
    backup.chmod(0o644)
    found = item(env, "data permissions")
    assert found.status == "fail" and str(backup) in found.summary
    (nexus / "backups").chmod(0o700)
    assert item(env, "data permissions").status == "pass"
    database = nexus / "nexus.db"
    database.write_bytes(b"")
    database.chmod(0o644)
    assert item(env, "data permissions").status == "warn"


def test_readable_by_others_sees_through_the_folders(open_tmp: Path) -> None:
    inner = open_tmp / "inner"
    inner.mkdir(mode=0o755)
    target = inner / "file"
    target.write_text("x")
    target.chmod(0o644)
    assert readable_by_others(target)
    target.chmod(0o640)
    assert not readable_by_others(target)
    target.chmod(0o644)
    inner.chmod(0o750)
    assert not readable_by_others(target)


def test_an_alerts_file_with_credentials_must_be_private(
    home: dict[str, str], open_tmp: Path
) -> None:
    rules = open_tmp / "alerts.yml"
    rules.write_text("webhooks:\n  - url: https://hooks.example/x\n    token: abc\n")
    env = {**home, "NEXUS_ALERTS_FILE": str(rules)}
    rules.chmod(0o600)
    assert item(env, "alert webhooks").status == "pass"
    rules.chmod(0o644)
    found = item(env, "alert webhooks")
    assert found.status == "fail" and found.fix == f"chmod 600 {rules}"
    clear = {**home, "NEXUS_ALERT_WEBHOOK_URLS": "http://alerts.example/hook"}
    assert item(clear, "alert webhooks").status == "warn"


def test_the_opencode_version_is_checked_against_the_pinned_one(
    home: dict[str, str], opencode_bin: Path
) -> None:
    env = {**home, "NEXUS_OPENCODE_BIN": str(opencode_bin)}
    assert item(env, "OpenCode version").status == "pass"
    other = item({**env, "NEXUS_OPENCODE_VERSION": "0.0.1"}, "OpenCode version")
    assert other.status == "warn" and "pinned version is 0.0.1" in other.summary
    assert item(home, "OpenCode version").status == "warn"  # no binary at all


def test_a_server_that_answers_without_a_password_fails(home: dict[str, str]) -> None:
    class Open(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"healthy":true}')

        def log_message(self, format: str, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Open)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        found = item({**home, "NEXUS_OPENCODE_PORT": str(port)}, "server password")
    finally:
        server.shutdown()
        server.server_close()
    assert found.status == "fail" and "answers without a password" in found.summary


# ---- masking ----------------------------------------------------------------------------


def test_webhook_urls_are_masked_in_settings_and_text() -> None:
    url = "https://hook:pw-123@hooks.example/services/T0/B0/abcdefghij0123456789?token=t0k&x=1"
    shown = mask_url(url)
    assert "pw-123" not in shown and "abcdefghij0123456789" not in shown and "t0k" not in shown
    assert shown.startswith("https://hook:********@hooks.example/services/T0/B0/")
    assert mask_setting("alert_webhook_urls", f"{url},https://a.example/") == (
        f"{shown},https://a.example/"
    )
    assert mask_setting("alert_webhook_token", "t") == MASK
    assert redact("POST /hook?api_key=abc&user=1") == f"POST /hook?api_key={MASK}&user=1"


# ---- the audit -----------------------------------------------------------------------------


def test_vulnerability_and_licence_results() -> None:
    found = {
        "dependencies": [
            {"name": "nexus-ops", "skip_reason": "editable"},
            {
                "name": "jinja2",
                "version": "2.0",
                "vulns": [{"id": "PYSEC-1", "fix_versions": ["3"]}],
            },
            {"name": "httpx", "version": "0.28.1", "vulns": []},
            {"name": "gone", "skip_reason": "Dependency not found on PyPI"},
        ]
    }
    result = _vulnerability_result(found, "pypi", 1.0, ["vulnerabilities.json"])
    assert result.status == "fail" and "1 known vulnerabilities in jinja2" in result.summary
    assert result.details["audited"] == 2 and result.details["skipped"] == 1
    nothing = {"dependencies": [{"name": "a", "skip_reason": "Dependency not found on PyPI"}]}
    offline = _vulnerability_result(nothing, "pypi", 1.0, [])
    assert (
        offline.status == "unreachable" and "vulnerability service unreachable" in offline.summary
    )
    rows = [
        {"Name": "good", "License": "MIT License"},
        {"Name": "either", "License": "GPL-3.0-only OR Apache-2.0"},
        {"Name": "copyleft", "License": "GNU General Public License v3 (GPLv3)"},
        {"Name": "mystery", "License": "UNKNOWN"},
    ]
    licences = _licence_result(rows, 1.0, [])
    assert licences.status == "fail"
    assert licences.details["not_allowed"] == ["copyleft (GNU General Public License v3 (GPLv3))"]
    assert licences.details["unknown"] == ["mystery"]
    assert licence_allowed("BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0")
    assert not licence_allowed("MIT AND LGPL-2.1")


def test_audit_writes_sbom_and_licences_and_says_unreachable_offline(tmp_path: Path) -> None:
    env = private_env(tmp_path / "env")
    closed = f"http://127.0.0.1:{free_port()}"  # every request to the service fails
    env.update(HTTPS_PROXY=closed, https_proxy=closed, HTTP_PROXY=closed, http_proxy=closed)
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    out = tmp_path / "audit"
    args = ["security", "audit", "--out", str(out), "--json"]
    done = nexus_cli(env, *args, timeout=600)
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    results = {r["tool"]: r for r in report["results"]}
    assert results["pip-audit"]["status"] == "unreachable"
    assert "vulnerability service unreachable" in results["pip-audit"]["summary"]
    assert results["cyclonedx-py"]["status"] == "pass"
    assert results["pip-licenses"]["status"] in ("pass", "warn"), results["pip-licenses"]
    assert done.returncode == 0 and report["ok"] is True
    sbom = json.loads((out / "sbom.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    names = {c["name"].lower().replace("_", "-") for c in sbom["components"]}
    assert {"fastapi", "httpx", "psutil", "pip-audit"} <= names
    licences = json.loads((out / "licences.json").read_text())
    assert any(row["Name"] == "fastapi" for row in licences)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"][0]["tool"] == "pip-audit"
    assert "Dependency audit" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == [
        "licences.json",
        "report.md",
        "sbom.cdx.json",
        "summary.json",
    ]


def test_audit_into_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = nexus_cli(
        private_env(tmp_path / "env"), "security", "audit", "--out", str(blocker / "x")
    )
    assert done.returncode == 1
    assert "cannot be created" in done.stderr and "Traceback" not in done.stderr


def test_the_settings_repr_masks_secrets(tmp_path: Path) -> None:
    """A notebook cell that shows an object holding the settings must not show secrets."""
    settings = load_settings(
        private_env(
            tmp_path,
            {
                "NEXUS_ALERT_WEBHOOK_URLS": "https://hook:pw-PLANTED@h.example/x?token=q-PLANTED",
                "NEXUS_ALERT_WEBHOOK_TOKEN": "t-PLANTED",
                "NEXUS_PROMETHEUS_URL": "http://prom:p-PLANTED@127.0.0.1:9090",
            },
        )
    )
    for shown in (repr(settings), str(settings), f"{settings!r}"):
        assert "PLANTED" not in shown
    assert "alert_webhook_token='********'" in repr(settings)
    assert settings.alert_webhook_token == "t-PLANTED"  # the value itself is intact


def test_a_console_on_a_non_loopback_address_fails_unless_allowed(home: dict[str, str]) -> None:
    assert item(home, "console bind").status == "pass"
    remote = {**home, "NEXUS_CONSOLE_HOST": "0.0.0.0"}
    assert item(remote, "console bind").status == "fail"
    assert item({**remote, "NEXUS_ALLOW_REMOTE": "true"}, "console bind").status == "warn"
