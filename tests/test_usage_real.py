"""The models' usage, counted by a real agent from a real OpenCode on the scripted
provider, against what ``opencode stats`` prints for the same data."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backup_helpers import install_config
from conftest import RunningAgent, start_agent, wait_for

from nexus_ops.opencode import Credentials
from nexus_ops.paths import Layout
from nexus_ops.workload.config import config_file, write_provider_config
from nexus_ops.workload.driver import run_workload
from nexus_ops.workload.provider import ScriptedProvider
from nexus_ops.workload.script import HttpError, Reply, Rule, Script, bash

pytestmark = pytest.mark.opencode

# Dollars per million tokens: large, so that ``opencode stats``' four decimals tell.
PRICES = {"input": 1000.0, "output": 4000.0}


@pytest.fixture
def scripted_env(
    nexus_env: dict[str, str], opencode_config: Path
) -> Iterator[tuple[dict[str, str], ScriptedProvider]]:
    """An agent's environment whose OpenCode answers from a script, at ``PRICES``."""
    install_config(opencode_config, nexus_env)
    nexus_env.update(NEXUS_METRICS_INTERVAL="1", NEXUS_METRICS_FLUSH_INTERVAL="1")
    script = Script(
        rules=[
            Rule(when="get busy", then=bash("sleep 1")),
            Rule(when="refuse", then=HttpError(500, retry_after=0.1, message="scripted refusal")),
        ],
        default=Reply(tokens=12),
    )
    with ScriptedProvider(script) as provider:
        home, config = Path(nexus_env["HOME"]), Path(nexus_env["XDG_CONFIG_HOME"])
        path = write_provider_config(home, provider.base_url, config)
        written = json.loads(path.read_text())
        written["provider"]["scripted"]["models"]["m1"]["cost"] = PRICES
        config_file(home, config).write_text(json.dumps(written))
        yield nexus_env, provider


def opencode(binary: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(binary), *args],
        env={**env, "PWD": env["HOME"]}, cwd=env["HOME"], capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def model_stats(output: str) -> dict[str, float]:
    """``opencode stats --models``' rows of the one model (``│  Output Tokens   23 │``)
    and its tool rows (``│ bash  ███  2 (100.0%) │``) as numbers; ``7.2K`` is 7200."""
    model = output.split("MODEL USAGE", 1)[1].split("TOOL USAGE", 1)[0]
    found = {}
    for name, value, suffix in re.findall(r"│\s*([A-Za-z ]+?)\s+\$?([\d.]+)([KM]?)\s*│", model):
        found[name] = float(value) * {"": 1, "K": 1e3, "M": 1e6}[suffix]
    tools = output.split("TOOL USAGE", 1)[1] if "TOOL USAGE" in output else ""
    for tool, count in re.findall(r"│ (\w+)\s+█*\s+(\d+) \(", tools):
        found[f"tool {tool}"] = float(count)
    return found


def usage_of(agent: RunningAgent) -> dict[str, Any]:
    """The agent's usage of ``scripted/m1``, and its tool calls by name."""
    usage = agent.client.usage()
    [model] = [m for m in usage["models"] if (m["provider"], m["model"]) == ("scripted", "m1")]
    tools: dict[str, float] = {}
    for row in usage["tools"]:
        tools[row["tool"]] = tools.get(row["tool"], 0.0) + row["calls"]
    return {**model, "tool_calls": tools, "summary": usage}


def agrees_with_stats(agent: RunningAgent, binary: Path, served_input: int) -> dict[str, Any]:
    """The agent's totals once they equal ``opencode stats`` (and the tokens served)."""
    stats = model_stats(opencode(binary, agent.env, "stats", "--models"))

    seen: list[dict[str, Any]] = []

    def same() -> dict[str, Any] | None:
        mine = usage_of(agent)
        seen[:] = [mine]
        tokens = mine["tokens"]
        checks = [
            mine["summary"]["synced"],
            tokens["input"] == served_input,
            abs(tokens["input"] - stats["Input Tokens"]) <= 50,  # shown as e.g. "7.2K"
            tokens["output"] == stats["Output Tokens"],
            tokens["cache_read"] == stats["Cache Read"],
            tokens["cache_write"] == stats["Cache Write"],
            mine["messages"] == stats["Messages"],
            round(mine["cost"], 4) == stats["Cost"],
            mine["tool_calls"].get("bash", 0.0) == stats.get("tool bash", 0.0),
        ]
        return mine if all(checks) else None

    try:
        return wait_for(same, timeout=45)  # type: ignore[return-value]
    except pytest.fail.Exception:
        pytest.fail(f"the agent's usage {seen} never equalled {stats}, served {served_input}")


def served_prompt_tokens(provider: ScriptedProvider) -> int:
    """Prompt tokens of the answers the provider gave (an error answer counts none)."""
    return sum(s.prompt_tokens for s in provider.requests() if s.step != "HttpError")


def test_usage_equals_opencode_stats_before_and_after_the_agent_and_a_dropped_stream(
    scripted_env: tuple[dict[str, str], ScriptedProvider], opencode_bin: Path
) -> None:
    env, provider = scripted_env
    # Work done before any agent runs: counted from the API when the agent starts.
    opencode(opencode_bin, env, "run", "--model", "scripted/m1", "say hello")
    agent = start_agent(env)
    try:
        agent.client.start()
        first = agrees_with_stats(agent, opencode_bin, served_prompt_tokens(provider))
        assert first["messages"] == 1 and first["tokens"]["output"] == 12

        # Work through the agent's server: counted from the event stream.
        password = Layout(agent.settings.home).server_password_file.read_text().strip()
        credentials = Credentials(agent.settings.opencode_username, password)
        result = run_workload(
            agent.settings.opencode_base_url, credentials, 2, ["hello", "get busy", "refuse"]
        )
        assert len(result.errors) == 2, result.errors  # the refusals
        live = agrees_with_stats(agent, opencode_bin, served_prompt_tokens(provider))
        assert live["messages"] == 1 + 2 * 4  # reply; tool call and its answer; refusal
        assert live["errors"] == 2
        assert live["tool_calls"] == {"bash": 2}
        assert live["cost"] > first["cost"] > 0
        connections = live["summary"]["connections"]

        # Work the stream never shows (another process on the same data), then a
        # dropped stream (the server restarts): counted again once it reconnects.
        opencode(opencode_bin, env, "run", "--model", "scripted/m1", "say hello again")
        agent.client.restart()
        after_drop = agrees_with_stats(agent, opencode_bin, served_prompt_tokens(provider))
        assert after_drop["messages"] == live["messages"] + 1
        assert after_drop["summary"]["connections"] > connections
    finally:
        agent.client.close()
        agent.stop()

    # An agent started again later does not start from zero.
    again = start_agent(env)
    try:
        again.client.start()
        restarted = agrees_with_stats(again, opencode_bin, served_prompt_tokens(provider))
        assert restarted["messages"] == after_drop["messages"]
        assert restarted["errors"] == 2
        text = again.client.metrics_text()
        labels = 'kind="output",model="m1",provider="scripted"'
        output = restarted["tokens"]["output"]
        assert f"opencode_usage_tokens_total{{{labels}}} {output}" in text
        assert 'opencode_tool_calls_total{outcome="completed",tool="bash"} 2.0' in text
        assert 'opencode_provider_errors_total{model="m1",provider="scripted"} 2.0' in text
        assert "opencode_prompts_in_flight 0.0" in text
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=text, text=True, capture_output=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr

        def stored() -> list[float]:
            frame = again.client.query_metrics(
                "opencode_usage_tokens_total", labels={"kind": "output"}, start="5m"
            )
            return list(frame["value"])

        history = wait_for(
            lambda: (found := stored()) and found[-1] == output and found,
            what=f"the history's latest output tokens at {output}",
        )
        # A counter never drops, across the agent's restart too: no sample is stored
        # before the new agent has counted the sessions.
        assert history == sorted(history), history
    finally:
        again.client.close()
        again.stop()


def test_every_session_is_listed_a_page_at_a_time_by_the_real_server(
    opencode_bin: Path, opencode_config: Path, tmp_path: Path
) -> None:
    import asyncio

    from backup_helpers import DirectServer
    from conftest import free_port, kill_everything_of, private_env

    from nexus_ops.metrics.usage_follow import PAGE, UsageTracker
    from nexus_ops.opencode import AsyncOpenCodeClient

    env = private_env(tmp_path)
    install_config(opencode_config, env)
    server = DirectServer(opencode_bin, env, free_port(), "pw")
    server.start()
    try:
        server.wait_healthy(60)
        made = {server.post("/session", {}).json()["id"] for _ in range(PAGE + 3)}

        async def listed(since: float | None = None) -> set[str]:
            client = AsyncOpenCodeClient(server.url, Credentials("opencode", "pw"), timeout=10)
            try:
                tracker = UsageTracker(client, server)  # type: ignore[arg-type]
                return {str(s["id"]) for s in await tracker.sessions(since)}
            finally:
                await client.aclose()

        assert asyncio.run(listed()) == made
        assert asyncio.run(listed(since=time.time() + 60)) == set()
    finally:
        server.stop()
        kill_everything_of(env)
