"""The security_audit runbook, run by `nexus-ops runbook run` (papermill, a real kernel)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import nbformat
from conftest import free_port, nexus_cli, private_env

from nexus_ops.paths import Layout, read_or_create_secret
from nexus_ops.runbooks import find_verdict


def run(env: dict[str, str], *params: str) -> dict[str, object]:
    args = ["runbook", "run", "security_audit", "--json"]
    for pair in params:
        key, value = pair.split("=", 1)
        args += ["-p", key, value]
    done = nexus_cli(env, *args, timeout=600)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    record: dict[str, object] = json.loads(done.stdout)
    assert record["status"] == "succeeded", record
    return record


def test_the_runbook_reports_then_fixes_a_world_readable_secret(tmp_path: Path) -> None:
    env = private_env(tmp_path / "env")
    closed = f"http://127.0.0.1:{free_port()}"
    env.update(HTTPS_PROXY=closed, https_proxy=closed)  # the vulnerability service: unreachable
    layout = Layout(Path(env["NEXUS_HOME"])).ensure()
    token = layout.agent_token_file
    secret = read_or_create_secret(token)
    token.chmod(0o644)

    out = tmp_path / "audit"
    first = run(env, f"out_dir={out}")
    verdict = first["verdict"]
    assert isinstance(verdict, dict)
    assert first["healthy"] is False and verdict["dry_run"] is True
    assert "secret files" in str(verdict["summary"])
    assert "set dry_run=False to fix the permissions" in str(verdict["summary"])
    assert stat.S_IMODE(token.stat().st_mode) == 0o644  # a dry run changes nothing
    findings = {f["check"]: f for f in verdict["findings"]}  # type: ignore[index,union-attr]
    assert findings["pip-audit"]["severity"] == "warning"
    assert "unreachable" in findings["pip-audit"]["summary"]
    assert findings["cyclonedx-py"]["ok"] and findings["pip-licenses"]["ok"]
    assert (out / "sbom.cdx.json").is_file() and (out / "summary.json").is_file()

    second = run(env, "dry_run=false", "run_audit=false")
    assert second["healthy"] is True
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    notebook = nbformat.read(str(second["notebook"]), as_version=4)
    final = find_verdict(notebook)
    assert final is not None and final.healthy and not final.dry_run
    assert [a.done for a in final.actions] == [True]
    assert "chmod 600" in final.actions[0].summary
    assert secret not in Path(str(second["notebook"])).read_text()
