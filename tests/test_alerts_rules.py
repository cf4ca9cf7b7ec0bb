"""Alert rules, the state machine, the sample window and the Prometheus export (pure logic,
plus the real promtool)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import nexus_cli, private_env

from nexus_ops.alerts import (
    AlertRule,
    AlertsConfig,
    AlertService,
    AlertTrack,
    describe_rule_status,
    export_rules,
)
from nexus_ops.alerts.rules import default_rules, load_config, parse_duration
from nexus_ops.alerts.window import SeriesWindow, aggregate_values, increase
from nexus_ops.config import load_settings
from nexus_ops.errors import ConfigError
from nexus_ops.store import Database, Journal

DOWN = AlertRule(
    name="Down", metric="opencode_server_status", op="<", value=1, for_seconds=10, keep_firing_for=5
)


def settings_with(tmp_path: Path, text: str | None = None, **extra: str) -> object:
    env = private_env(tmp_path, extra)
    if text is not None:
        rules = tmp_path / "alerts.yml"
        rules.write_text(text)
        env["NEXUS_ALERTS_FILE"] = str(rules)
    return load_settings(env)


# ---- rules and the file ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(30, 30.0), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("2.5", 2.5), ("0", 0.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "-5", "", True, "5 minutes"])
def test_bad_durations_say_what_is_expected(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_the_file_adds_rules_replaces_defaults_and_names_bad_fields(tmp_path: Path) -> None:
    text = """
rules:
  - name: OpenCodeServerDown
    metric: opencode_server_status
    op: "<"
    value: 1
    for: 1m
  - name: BusySessions
    metric: opencode_sessions
    match: {status: busy}
    value: 20
webhooks:
  - url: https://hooks.example/x
    token: abc
"""
    config = load_config(settings_with(tmp_path, text))  # type: ignore[arg-type]
    names = [r.name for r in config.rules]
    assert names == [
        "OpenCodeServerDown",
        "OpenCodeRestartRate",
        "OpenCodeHighMemory",
        "OpenCodeRequestLatency",
        "OpenCodeRolledBack",
        "BusySessions",
    ]
    assert config.rules[0].for_seconds == 60  # the file's rule replaced the default one
    assert config.webhooks[0].token == "abc"

    bad = "rules:\n  - name: Busy\n    metric: opencode_sessions\n    op: '!='\n    for: soon\n"
    with pytest.raises(ConfigError) as caught:
        load_config(settings_with(tmp_path, bad))  # type: ignore[arg-type]
    message = str(caught.value)
    assert "rules[0] (Busy).op" in message and "rules[0] (Busy).for" in message
    assert "NEXUS_ALERTS_FILE" in message

    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(settings_with(tmp_path, "rules: [\n"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"treshold: Extra inputs"):
        load_config(
            settings_with(tmp_path, "rules:\n  - name: X\n    metric: m\n    treshold: 3\n")
        )  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a metric name"):
        load_config(settings_with(tmp_path, "rules:\n  - name: X\n    metric: 'bad name'\n"))  # type: ignore[arg-type]
    missing = settings_with(tmp_path, NEXUS_ALERTS_FILE=str(tmp_path / "nope.yml"))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(missing)  # type: ignore[arg-type]


def test_defaults_can_be_turned_off_and_webhooks_come_from_the_settings(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path,
        "defaults: false\nrules: []\n",
        NEXUS_ALERT_WEBHOOK_URLS="https://a.example/1, https://b.example/2",
        NEXUS_ALERT_WEBHOOK_TOKEN="t0ken",
    )
    config = load_config(settings)  # type: ignore[arg-type]
    assert config.rules == []
    assert [(w.url, w.token) for w in config.webhooks] == [
        ("https://a.example/1", "t0ken"),
        ("https://b.example/2", "t0ken"),
    ]
    with pytest.raises(ConfigError, match="NEXUS_ALERT_WEBHOOK_URLS"):
        settings_with(tmp_path, NEXUS_ALERT_WEBHOOK_URLS="ftp://x")


def test_webhook_timeouts_and_grouping_are_checked(tmp_path: Path) -> None:
    text = "webhooks:\n  - {url: https://a.example/1, timeout: 2s}\n  - url: https://b.example/2\n"
    config = load_config(settings_with(tmp_path, text))  # type: ignore[arg-type]
    assert [w.timeout for w in config.webhooks] == [2.0, None]
    for bad in ("0s", "5m"):
        with pytest.raises(ConfigError, match=r"webhooks\[0\].*timeout must be more than 0"):
            load_config(
                settings_with(tmp_path, f"webhooks:\n  - {{url: https://a.x, timeout: {bad}}}\n")
            )  # type: ignore[arg-type]
    service = AlertService.from_settings(
        settings_with(tmp_path, NEXUS_ALERT_GROUP_BY=" severity , team "),  # type: ignore[arg-type]
        Journal(Database(tmp_path / "g.db")),
    )
    assert service.notifier.grouping.by == ("severity", "team")
    assert service.notifier.grouping.key({"severity": "info"}) == '{}:{severity="info",team=""}'
    with pytest.raises(ConfigError, match="NEXUS_ALERT_GROUP_BY"):
        settings_with(tmp_path, NEXUS_ALERT_GROUP_BY="team-name")


# ---- the state machine -------------------------------------------------------------------


def test_pending_then_firing_then_kept_firing_then_resolved() -> None:
    track = AlertTrack()
    assert track.step(DOWN, True, 0.0, 100.0).to == "pending"  # type: ignore[union-attr]
    assert track.step(DOWN, True, 0.0, 105.0) is None
    fired = track.step(DOWN, True, 0.0, 110.0)
    assert fired is not None and (fired.frm, fired.to, fired.notify) == (
        "pending",
        "firing",
        "firing",
    )
    assert track.step(DOWN, False, 1.0, 111.0) is None  # keep_firing_for 5 s
    assert track.step(DOWN, True, 0.0, 113.0) is None  # back: the clear timer restarts
    assert track.step(DOWN, False, 1.0, 114.0) is None
    resolved = track.step(DOWN, False, 1.0, 119.0)
    assert resolved is not None and (resolved.to, resolved.notify) == ("resolved", "resolved")
    again = track.step(DOWN, True, 0.0, 120.0)
    assert again is not None and again.to == "pending"


def test_a_short_blip_never_fires() -> None:
    track = AlertTrack()
    assert track.step(DOWN, True, 0.0, 100.0).to == "pending"  # type: ignore[union-attr]
    back = track.step(DOWN, False, 1.0, 103.0)
    assert back is not None and (back.to, back.notify) == ("inactive", None)


def test_flapping_alerts_stop_notifying_and_send_the_state_once_settled() -> None:
    rule = AlertRule(name="Flappy", metric="m", value=1)  # fires at once, resolves at once
    track = AlertTrack(flap_window=100.0, flap_limit=3)
    changes = [track.step(rule, second % 2 == 0, 2.0, 1000.0 + second) for second in range(11)]
    assert all(c is not None for c in changes)  # every step changed the state...
    sent = [c.notify for c in changes if c is not None and c.notify]
    assert sent == ["firing", "resolved", "firing", "resolved"]  # ...only four were sent
    assert track.flapping and track.state == "firing"
    assert track.step(rule, True, 2.0, 1050.0) is None  # still flapping: nothing sent
    settled = track.step(rule, True, 2.0, 1010.0 + 100.0)
    assert not track.flapping
    assert settled is not None and settled.notify == "firing"  # the state it settled in
    assert track.step(rule, True, 2.0, 1111.0) is None


def test_state_survives_a_restart_of_the_agent(tmp_path: Path) -> None:
    journal = Journal(Database(tmp_path / "nexus.db"))
    rule = AlertRule(name="Down", metric="opencode_server_status", op="<", value=1)
    first = AlertService(AlertsConfig(rules=[rule]), journal)
    first.window.add_reading(1000.0, [("opencode_server_status", {}, 0.0)])
    assert [t.to for t in first.evaluate(now=1000.5)] == ["firing"]
    second = AlertService(AlertsConfig(rules=[rule]), journal)
    assert second.tracks["Down"].state == "firing"
    second.window.add_reading(1001.0, [("opencode_server_status", {}, 0.0)])
    assert second.evaluate(now=1001.5) == []  # still firing: not notified twice
    events = journal.events(kinds=["alert"])
    assert [e.reason for e in events] == ["firing"]
    assert events[0].details["rule"] == "Down"


def test_journal_and_list_write_values_and_thresholds_in_their_units(tmp_path: Path) -> None:
    journal = Journal(Database(tmp_path / "nexus.db"))
    memory = AlertRule(
        name="Big", metric="opencode_process_resident_memory_bytes", op=">", value=3221225472
    )
    slow = AlertRule(name="Slow", metric="opencode_request_duration_seconds", op=">", value=1)
    service = AlertService(AlertsConfig(rules=[memory, slow]), journal)
    readings = [
        ("opencode_process_resident_memory_bytes", {}, 3.99987e9),
        ("opencode_request_duration_seconds", {}, 1.0424714),
    ]
    service.window.add_reading(1000.0, readings)
    service.evaluate(now=1000.5)
    messages = sorted(e.message for e in journal.events(kinds=["alert"]))
    assert messages == [
        "Big: inactive -> firing (value 3.7 GiB): opencode_process_resident_memory_bytes > 3 GiB",
        "Slow: inactive -> firing (value 1.0 s): opencode_request_duration_seconds > 1 s",
    ]
    listed = [describe_rule_status(status) for status in service.view().rules]
    assert "3.7 GiB  opencode_process_resident_memory_bytes > 3 GiB" in listed[0]
    assert listed[1].endswith("1.0 s  opencode_request_duration_seconds > 1 s")
    # Prometheus and the rules' exact form keep the plain numbers.
    assert service.view().rules[0].expression.endswith("> 3221225472")


def test_a_rule_holds_only_while_its_gauge_is_one(tmp_path: Path) -> None:
    """The built-in server-down rule: a server the operator stopped is not an outage."""
    down = default_rules(load_settings(private_env(tmp_path)))[0]
    assert down.only_while == "opencode_server_desired_running"
    assert down.describe().endswith("while opencode_server_desired_running == 1 for 30s")
    service = AlertService(AlertsConfig(rules=[down]), Journal(Database(tmp_path / "n.db")))
    stopped = [("opencode_server_status", {}, 0.0), ("opencode_server_desired_running", {}, 0.0)]
    crashed = [("opencode_server_status", {}, 0.0), ("opencode_server_desired_running", {}, 1.0)]
    for t in range(0, 60, 5):
        service.window.add_reading(1000.0 + t, stopped)
        assert service.evaluate(now=1000.5 + t) == []
    changes = []
    for t in range(60, 100, 5):
        service.window.add_reading(1000.0 + t, crashed)
        changes += [c.to for c in service.evaluate(now=1000.5 + t)]
    assert changes == ["pending", "firing"]
    with pytest.raises(ValueError, match="not a metric name"):
        AlertRule(name="X", metric="opencode_server_status", only_while="no such-metric")


def test_the_built_in_rollback_rule_fires_once_the_rollback_counter_rises(tmp_path: Path) -> None:
    [rule] = [
        r
        for r in default_rules(load_settings(private_env(tmp_path)))
        if r.name == "OpenCodeRolledBack"
    ]
    assert rule.metric == "opencode_rollbacks_total" and rule.aggregate == "increase"
    service = AlertService(AlertsConfig(rules=[rule]), Journal(Database(tmp_path / "n.db")))
    changes = []
    for t, total in [(0, 2.0), (5, 2.0), (10, 2.0), (15, 3.0), (20, 3.0)]:
        service.window.add_reading(1000.0 + t, [("opencode_rollbacks_total", {}, total)])
        changes += [(t, c.to) for c in service.evaluate(now=1000.5 + t)]
    assert changes == [(15, "firing")]  # a counter that only stood still never fired


# ---- the window ----------------------------------------------------------------------------


def test_window_values_and_absence() -> None:
    window = SeriesWindow(keep=120, stale_after=3)
    for t, rss in [(0, 100.0), (1, 300.0), (2, 200.0)]:
        window.add_reading(
            t,
            [
                ("rss", {}, rss),
                ("conn", {"state": "ESTABLISHED"}, 4.0),
                ("conn", {"state": "CLOSE_WAIT"}, 9.0),
            ],
        )
    assert window.value("rss", {}, "last", 60, ">", now=2.5) == 200.0
    assert window.value("rss", {}, "max", 60, ">", now=2.5) == 300.0
    assert window.value("rss", {}, "mean", 60, ">", now=2.5) == 200.0
    assert window.value("conn", {}, "last", 60, ">", now=2.5) == 9.0  # the worst series
    assert window.value("conn", {}, "last", 60, "<", now=2.5) == 4.0
    assert window.value("conn", {"state": "ESTABLISHED"}, "last", 60, ">", now=2.5) == 4.0
    window.add_reading(3, [("conn", {"state": "ESTABLISHED"}, 1.0)])  # rss gone
    assert window.value("rss", {}, "last", 60, ">", now=3.5) is None
    assert window.seen("rss", {}, window=5, now=3.5)
    assert not window.seen("rss", {}, window=1, now=3.5)
    assert window.value("conn", {}, "last", 60, ">", now=100.0) is None  # the sampler stalled
    for t in range(10):
        window.observe("lat", {"path": "/x"}, 10 + t, t / 10)
    assert window.value("lat", {}, "p95", 5, ">", now=19.5) == 0.9
    assert window.value("lat", {}, "last", 5, ">", now=19.5) == 0.9
    assert window.value("lat", {}, "last", 5, ">", now=30.0) is None


def test_counter_increase_counts_resets_and_quantiles_use_nearest_rank() -> None:
    assert increase([(0, 1.0), (1, 2.0), (2, 4.0), (3, 1.0), (4, 2.0)]) == 5.0
    assert aggregate_values([1.0, 2.0, 3.0, 4.0], "p50") == 2.0
    assert aggregate_values([], "max") is None


# ---- Prometheus ----------------------------------------------------------------------------


def test_export_passes_promtool_for_every_kind_of_rule(tmp_path: Path) -> None:
    rules = [
        *default_rules(load_settings(private_env(tmp_path))),
        AlertRule(name="Absent", kind="absent", metric="opencode_process_threads", window="2m"),
        AlertRule(
            name="CloseWait",
            metric="opencode_connections",
            match={"state": "CLOSE_WAIT"},
            aggregate="mean",
            window="5m",
            value=20,
            op=">=",
            labels={"team": "ops"},
        ),
        AlertRule(
            name="Quiet",
            metric="opencode_process_cpu_seconds_total",
            aggregate="p90",
            op="<",
            value=0.5,
            window=90,
        ),
        AlertRule(name="Restarts", kind="restart_rate", value=2, window="10m", **{"for": "30s"}),
    ]
    text = export_rules(rules)
    path = tmp_path / "rules.yml"
    path.write_text(text)
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout
    exprs = {r["alert"]: r for r in yaml.safe_load(text)["groups"][0]["rules"]}
    assert exprs["OpenCodeServerDown"]["expr"] == (
        "(opencode_server_status < 1) and on (job, instance) opencode_server_desired_running == 1"
    )
    assert exprs["OpenCodeServerDown"]["for"] == "30s"
    assert exprs["OpenCodeServerDown"]["keep_firing_for"] == "10s"
    assert exprs["Absent"]["expr"] == "absent_over_time(opencode_process_threads[2m])"
    assert exprs["CloseWait"]["expr"] == (
        'max by (job, instance) (avg_over_time(opencode_connections{state="CLOSE_WAIT"}[5m])) >= 20'
    )
    assert exprs["CloseWait"]["labels"] == {"severity": "warning", "team": "ops"}
    assert "histogram_quantile(0.95" in exprs["OpenCodeRequestLatency"]["expr"]
    assert exprs["Restarts"]["expr"] == (
        "sum by (job, instance) (increase(opencode_server_starts_total[10m])) > 2"
    )


def test_exported_rules_behave_like_the_agent_under_promtool_test(tmp_path: Path) -> None:
    """promtool's rule unit tests: the exported server-down rule pends 30 s, then fires."""
    rules = default_rules(load_settings(private_env(tmp_path)))
    (tmp_path / "rules.yml").write_text(export_rules(rules))
    (tmp_path / "test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yml"],
                "evaluation_interval": "10s",
                "tests": [
                    {
                        "interval": "10s",
                        "input_series": [
                            {
                                "series": 'opencode_server_status{job="nx",instance="a"}',
                                "values": "1 1 0 0 0 0 0 1 1 1 1",
                            },
                            {
                                "series": 'opencode_server_desired_running{job="nx",instance="a"}',
                                "values": "1 1 1 1 1 1 1 1 1 1 1",
                            },
                            {
                                "series": 'opencode_server_starts_total{job="nx",instance="a"}',
                                "values": "1 2 3 4 5 6 6 6",
                            },
                        ],
                        "alert_rule_test": [
                            {
                                "eval_time": "40s",
                                "alertname": "OpenCodeServerDown",
                                "exp_alerts": [],
                            },
                            {
                                "eval_time": "50s",
                                "alertname": "OpenCodeServerDown",
                                "exp_alerts": [
                                    {
                                        "exp_labels": {
                                            "severity": "critical",
                                            "job": "nx",
                                            "instance": "a",
                                        },
                                        "exp_annotations": {
                                            "summary": rules[0].summary,
                                            "description": rules[0].description,
                                        },
                                    }
                                ],
                            },
                            {
                                "eval_time": "60s",
                                "alertname": "OpenCodeRestartRate",
                                "exp_alerts": [
                                    {
                                        "exp_labels": {
                                            "severity": "warning",
                                            "job": "nx",
                                            "instance": "a",
                                        },
                                        "exp_annotations": {
                                            "summary": rules[1].summary,
                                            "description": rules[1].description,
                                        },
                                    }
                                ],
                            },
                        ],
                    }
                ],
            }
        )
    )
    checked = subprocess.run(
        ["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_deploy_rule_file_is_the_export_of_the_built_in_rules(tmp_path: Path) -> None:
    """deploy/prometheus holds exactly what `alerts export-prometheus` prints (one source)."""
    committed = Path(__file__).resolve().parents[1] / "deploy/prometheus/rules/nexus-ops.rules.yml"
    exported = nexus_cli(private_env(tmp_path), "alerts", "export-prometheus")
    assert exported.returncode == 0, exported.stderr
    assert committed.read_text(encoding="utf-8") == exported.stdout, (
        "regenerate it: nexus-ops alerts export-prometheus > deploy/prometheus/rules/nexus-ops.rules.yml"
    )
    names = [r["alert"] for g in yaml.safe_load(exported.stdout)["groups"] for r in g["rules"]]
    assert len(names) == len(set(names))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(committed)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
