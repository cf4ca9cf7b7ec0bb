"""deploy/prometheus and deploy/grafana: checked by promtool, the dashboard's PromQL too."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "nexus-ops-dashboard.json"

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def test_scrape_config_is_valid(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["scrape_interval"] == "5s"
    assert job["authorization"]["type"] == "Bearer"
    assert [t.endswith(":1420") for t in job["static_configs"][0]["targets"]] == [True]
    # promtool wants the credentials file to exist: check a copy pointing at a real one.
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, copy)
    token = tmp_path / "agent.token"
    token.write_text("t0ken\n")
    text = (copy / "prometheus.yml").read_text()
    (copy / "prometheus.yml").write_text(text.replace("/run/secrets/agent.token", str(token)))
    done = promtool("check", "config", str(copy / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_alert_rules_are_valid_and_behave() -> None:
    rules = PROMETHEUS / "rules" / "nexus-ops.rules.yml"
    done = promtool("check", "rules", str(rules))
    assert done.returncode == 0, done.stdout + done.stderr
    names = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    assert {
        "OpenCodeServerDown",
        "OpenCodeRestartRate",
        "OpenCodeHighMemory",
        "NexusOpsAgentDown",
        "OpenCodeRequestLatency",
        "OpenCodeRolledBack",
    } <= names
    tested = promtool("test", "rules", "nexus-ops.rules.test.yml", cwd=PROMETHEUS / "tests")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    return exprs


def test_dashboard_has_the_seed_panels() -> None:
    board = json.loads(DASHBOARD.read_text())
    panels = {p["title"]: p for p in board["panels"]}
    status = panels["Server Status"]
    assert status["type"] == "stat"
    assert status["targets"][0]["expr"].startswith("opencode_server_status{")
    texts = status["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert (texts["0"]["text"], texts["1"]["text"]) == ("DOWN", "UP")
    duration = panels["Request Duration"]
    assert duration["type"] == "timeseries"
    assert all("opencode_request_duration_seconds_bucket" in t["expr"] for t in duration["targets"])
    for title in (
        "Uptime",
        "Restarts",
        "Memory",
        "CPU",
        "TCP connections by state",
        "Sessions by status",
    ):
        assert title in panels
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    # promtool parses the expressions of recording rules: one rule per panel query.
    grafana_vars = {
        "$__rate_interval": "1m",
        "$__range": "1h",
        "$__interval": "5s",
        "$instance": ".*",
    }
    rules = []
    for index, expr in enumerate(_dashboard_exprs()):
        for var, value in grafana_vars.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:query{index}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def _datasources(node: object) -> list[object]:
    """Every ``datasource`` value anywhere in the dashboard."""
    if isinstance(node, dict):
        found = [node["datasource"]] if "datasource" in node else []
        return found + [d for value in node.values() for d in _datasources(value)]
    if isinstance(node, list):
        return [d for item in node for d in _datasources(item)]
    return []


def test_dashboard_uses_the_data_source_picked_on_import() -> None:
    board = json.loads(DASHBOARD.read_text())
    (source,) = board["__inputs"]
    assert (source["name"], source["type"]) == ("DS_PROMETHEUS", "datasource")
    used = _datasources(board)
    # panels, targets, the annotation and the instance variable
    assert len(used) > len(board["panels"])
    assert all(d == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for d in used), used


def test_dashboard_variables_have_a_current_value() -> None:
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    assert variables
    for variable in variables:
        assert variable["current"].get("value"), variable["name"]


def test_dashboard_splits_request_duration_by_outcome() -> None:
    board = json.loads(DASHBOARD.read_text())
    (duration,) = [p for p in board["panels"] if p["title"] == "Request Duration"]
    for target in duration["targets"]:
        assert "sum by (le, path, outcome)" in target["expr"]
        assert "{{outcome}}" in target["legendFormat"]


def test_dashboard_start_annotation_follows_the_query_step() -> None:
    # One mark per start, at the step after it: the counter against itself one step
    # earlier, whatever step Grafana picks for the time range.
    (starts,) = json.loads(DASHBOARD.read_text())["annotations"]["list"]
    assert "offset $__interval" in starts["expr"]
    assert starts["step"] == "5s", "the scrape interval of deploy/prometheus"


def test_dashboard_shows_the_models_usage() -> None:
    board = json.loads(DASHBOARD.read_text())
    panels = {p["title"]: p for p in board["panels"]}
    wanted = {
        "Tokens per minute by model": ["opencode_usage_tokens_total"],
        "Cost by model": ["opencode_usage_cost_total"],
        "Prompts in flight, tool calls": [
            "opencode_prompts_in_flight",
            "opencode_tool_calls_total",
        ],
        "Assistant messages and provider errors": [
            "opencode_usage_messages_total",
            "opencode_provider_errors_total",
        ],
    }
    for title, metrics in wanted.items():
        exprs = [t["expr"] for t in panels[title]["targets"]]
        assert [m for m in metrics if any(m in e for e in exprs)] == metrics, title
        assert all(e.endswith("or on() vector(0)") for e in exprs), title  # 0, not "No data"
