"""Alerts on real sampled data: a real agent with the real OpenCode server, real webhooks."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alert_receiver import Receiver, receiver
from conftest import RunningAgent, free_port, start_agent, wait_for

from nexus_ops.alerts.notify import DELIVERY_FAILED

pytestmark = pytest.mark.opencode

RULES = """
defaults: false
rules:
  - name: ServerMemoryHigh        # the real server holds ~300 MB
    metric: opencode_process_resident_memory_bytes
    op: ">"
    value: 100000000
    for: 2s
  - name: ServerDown
    metric: opencode_server_status
    op: "<"
    value: 1
    for: 2s
    severity: critical
  - name: ThreadsAbsent
    kind: absent
    metric: opencode_process_threads
    window: 3s
    for: 1s
  - name: SlowRequests            # every real probe takes longer than 10 microseconds
    metric: opencode_request_duration_seconds
    aggregate: p95
    window: 4s
    value: 0.00001
    for: 1s
webhooks:
  - url: {good}
    token: {token}
  - url: {broken}
  - url: http://127.0.0.1:{closed}/hook
"""
TOKEN = "PLANTED-webhook-token-abcdef0123456789"


def states(agent: RunningAgent) -> dict[str, str]:
    return {r.rule.name: r.state for r in agent.client.alerts().rules}


def reached(agent: RunningAgent, wanted: dict[str, set[str]]) -> dict[str, str] | None:
    now = states(agent)
    return now if all(now[name] in allowed for name, allowed in wanted.items()) else None


@pytest.fixture
def hooks() -> Iterator[tuple[Receiver, Receiver]]:
    with receiver(userinfo="hook:PLANTED-hook-password") as good, receiver(final=500) as broken:
        yield good, broken


@pytest.fixture
def alerting_agent(
    nexus_env: dict[str, str], tmp_path: Path, hooks: tuple[Receiver, Receiver]
) -> Iterator[RunningAgent]:
    good, broken = hooks
    rules = tmp_path / "alerts.yml"
    rules.write_text(
        RULES.format(good=good.url, token=TOKEN, broken=broken.url, closed=free_port())
    )
    nexus_env.update(
        NEXUS_ALERTS_FILE=str(rules),
        NEXUS_METRICS_INTERVAL="1",
        NEXUS_ALERT_INTERVAL="0.5",
        NEXUS_ALERT_WEBHOOK_RETRIES="2",
        NEXUS_ALERT_WEBHOOK_TIMEOUT="2",
        NEXUS_ALERT_GROUP_WAIT="0",
        NEXUS_ALERT_GROUP_INTERVAL="0.5",
    )
    running = start_agent(nexus_env)
    yield running
    running.client.close()
    running.stop()


def test_threshold_down_absent_and_latency_fire_and_resolve(
    alerting_agent: RunningAgent, hooks: tuple[Receiver, Receiver]
) -> None:
    agent, (good, broken) = alerting_agent, hooks
    assert agent.client.start().ok
    up = {
        "ServerMemoryHigh": {"firing"},
        "SlowRequests": {"firing"},
        "ServerDown": {"inactive", "resolved"},
        "ThreadsAbsent": {"inactive", "resolved"},
    }
    wait_for(lambda: reached(agent, up), 30, what=f"alerts of a running server: {up}")
    value = next(r.value for r in agent.client.alerts().rules if r.rule.name == "ServerMemoryHigh")
    assert value is not None and value > 100e6  # the real server's resident memory

    assert agent.client.stop().ok
    down = {
        "ServerMemoryHigh": {"resolved"},
        "SlowRequests": {"resolved"},
        "ServerDown": {"firing"},
        "ThreadsAbsent": {"firing"},
    }
    wait_for(lambda: reached(agent, down), 30, what=f"alerts of a stopped server: {down}")

    assert agent.client.start().ok
    again = {
        "ServerDown": {"resolved"},
        "ThreadsAbsent": {"resolved"},
        "ServerMemoryHigh": {"firing"},
    }
    wait_for(lambda: reached(agent, again), 30, what=f"alerts of a restarted server: {again}")

    # Each change is in the journal, pending first where the rule waits.
    alerts = agent.client.events(kinds=["alert"], limit=1000)
    by_rule: dict[str, list[str]] = {}
    for event in alerts:
        by_rule.setdefault(event.details["rule"], []).append(str(event.reason))
    assert by_rule["ServerDown"][-3:] == ["pending", "firing", "resolved"]
    assert by_rule["ThreadsAbsent"][-3:] == ["pending", "firing", "resolved"]
    memory = ["pending", "firing", "resolved", "pending", "firing"]
    assert by_rule["ServerMemoryHigh"][-5:] == memory

    # The working webhook got firing and resolved, with its token.
    wanted = {
        ("ServerDown", "firing"),
        ("ServerDown", "resolved"),
        ("ThreadsAbsent", "resolved"),
        ("ServerMemoryHigh", "resolved"),
        ("SlowRequests", "firing"),
    }
    wait_for(lambda: wanted <= set(good.alerts()), 20, what="notifications at the receiver")
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in good.received)
    down_alert = next(
        r.body
        for r in good.received
        if r.body["status"] == "firing"
        and r.body["alerts"][0]["labels"]["alertname"] == "ServerDown"
    )
    assert down_alert["alerts"][0]["labels"]["severity"] == "critical"

    # The broken ones were retried (1 + 2 retries each) and every failure recorded.
    wait_for(
        lambda: len(agent.client.events(kinds=[DELIVERY_FAILED], limit=1000)) >= 2 * 3,
        30,
        what="delivery failures in the journal",
    )
    failures = agent.client.events(kinds=[DELIVERY_FAILED], limit=1000)
    assert all(f.details["attempts"] == 3 for f in failures)
    assert {f.details["error"].split(":")[0] for f in failures} >= {
        "HTTP 500 Internal Server Error",
        "ConnectError",
    }
    assert len(broken.received) >= 3 * 3
    view = agent.client.alerts()
    counts = {r.receiver: (r.delivered, r.failed) for r in view.receivers}
    assert len(counts) == 3
    assert (
        sum(d for d, _ in counts.values()) >= len(wanted)
        and sum(f for _, f in counts.values()) >= 6
    )
    everything = view.model_dump_json() + "".join(e.model_dump_json() for e in failures)
    assert "PLANTED" not in everything  # the URL's password and the token are masked
    assert "hook:********@127.0.0.1" in everything


def test_restart_rate_fires_after_kill_9s_and_resolves(
    nexus_env: dict[str, str], tmp_path: Path
) -> None:
    rules = tmp_path / "alerts.yml"
    rules.write_text(
        "defaults: false\nrules:\n"
        "  - {name: CrashLoop, kind: restart_rate, value: 2, window: 25s, severity: critical}\n"
    )
    nexus_env.update(
        NEXUS_ALERTS_FILE=str(rules), NEXUS_METRICS_INTERVAL="1", NEXUS_ALERT_INTERVAL="0.5"
    )
    agent = start_agent(nexus_env)
    try:
        pid = agent.client.start().status.pid
        for _ in range(3):
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            pid = wait_for(lambda old=pid: _new_healthy_pid(agent, old), 30, what="a restart")  # type: ignore[misc]
        firing = wait_for(lambda: states(agent)["CrashLoop"] == "firing", 15, what="CrashLoop")
        assert firing
        rule = next(r for r in agent.client.alerts().rules if r.rule.name == "CrashLoop")
        assert rule.value is not None and rule.value >= 3
        restarts = [e for e in agent.client.events(kinds=["restart"]) if e.reason == "crash"]
        assert len(restarts) == 3
        wait_for(lambda: states(agent)["CrashLoop"] == "resolved", 40, what="CrashLoop resolved")
    finally:
        agent.client.close()
        agent.stop()


def _new_healthy_pid(agent: RunningAgent, old: int) -> int | None:
    status = agent.client.status()
    return status.pid if status.healthy and status.pid not in (None, old) else None


def test_start_and_restart_raise_no_server_down(nexus_env: dict[str, str]) -> None:
    """A start or an operator's restart is not an outage: OpenCodeServerDown never pends."""
    nexus_env.update(NEXUS_METRICS_INTERVAL="1", NEXUS_ALERT_INTERVAL="0.5")
    agent = start_agent(nexus_env)
    try:
        for action in (agent.client.start, agent.client.restart):
            assert action().ok
            ready = time.time()
            # Evaluations of readings taken after the server became ready.
            wait_for(
                lambda ready=ready: (agent.client.alerts().evaluated_at or 0) > ready + 3,  # type: ignore[misc]
                30,
                what="evaluations after the server is ready",
            )
        events = agent.client.events(kinds=["alert"])
        down = [e.message for e in events if (e.details or {}).get("rule") == "OpenCodeServerDown"]
        assert down == []
        assert states(agent)["OpenCodeServerDown"] == "inactive"
    finally:
        agent.client.close()
        agent.stop()


STORM_RULES = 300


def storm_file(path: Path, hang: str, slow: str) -> None:
    """300 rules that all fire at once; every other one keeps flipping with the probes'
    latency; two receivers."""
    lines = ["defaults: false", "rules:"]
    for i in range(STORM_RULES):
        if i % 2:
            cond = "metric: opencode_request_duration_seconds, window: 2s, "
            cond += f"value: {0.0005 + i * 0.00002:.5f}"
        else:
            cond = "metric: opencode_process_threads, value: 0"
        lines.append(f"  - {{name: Storm{i:03d}, op: '>', {cond}}}")
    lines += ["webhooks:", f"  - {{url: {hang}, timeout: 1s}}", f"  - url: {slow}"]
    path.write_text("\n".join(lines) + "\n")


def test_an_alert_storm_starves_neither_the_api_nor_the_supervisor(
    nexus_env: dict[str, str], tmp_path: Path
) -> None:
    """300 firing rules, one receiver that hangs and one that is slow: /health answers at
    once all along, the healthy server is never declared hung, and the receivers get
    one notification per group, not one per alert."""
    with receiver(hang=True) as hang, receiver(delay=1.0) as slow:
        rules = tmp_path / "alerts.yml"
        storm_file(rules, hang.url, slow.url)
        nexus_env.update(
            NEXUS_ALERTS_FILE=str(rules),
            NEXUS_METRICS_INTERVAL="1",
            NEXUS_ALERT_INTERVAL="0.5",
            NEXUS_ALERT_WEBHOOK_RETRIES="1",
            NEXUS_ALERT_GROUP_WAIT="1",
            NEXUS_ALERT_GROUP_INTERVAL="2",
        )
        agent = start_agent(nexus_env)
        try:
            started = agent.client.start()
            assert started.ok
            pid = started.status.pid
            url = f"http://127.0.0.1:{agent.settings.agent_port}/health"
            answered, missed = 0, []
            with httpx.Client(timeout=5.0) as http:  # before: no answer within 30 s

                def storm_went_on() -> bool:
                    nonlocal answered
                    try:
                        answered += http.get(url).status_code == 200
                    except httpx.HTTPError as exc:
                        missed.append(repr(exc))
                    firing = sum(r.state == "firing" for r in agent.client.alerts().rules)
                    return (
                        firing >= STORM_RULES / 2
                        and len(slow.received) >= 2
                        and (len(hang.received) >= 2)
                    )

                wait_for(storm_went_on, 90, what="a storm delivered to both receivers")
            assert missed == [] and answered >= 5
            # No false hang: the healthy server was never restarted.
            assert agent.client.events(kinds=["hung", "restart", "exit"]) == []
            status = agent.client.status()
            assert status.healthy and status.pid == pid
            # Grouped: the first notification carries every rule that fired at once.
            first = slow.received[0].body
            assert first["groupKey"] == '{}:{severity="warning"}'
            assert len(first["alerts"]) >= STORM_RULES / 2
            assert len(slow.received) < STORM_RULES / 10
            # The hanging receiver's last try is recorded once its deadline has passed.
            failed = wait_for(
                lambda: agent.client.events(kinds=[DELIVERY_FAILED], limit=1000),
                30,
                what="the hanging receiver's failed delivery in the journal",
            )
            assert all(f.details["error"] == "Timeout: no answer within 1 s" for f in failed)
        finally:
            agent.client.close()
            agent.stop()
