"""Settings: profiles, .env files, and one clear error for every bad value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import nexus_cli, private_env

from nexus_ops.config import (
    PROFILE_DEFAULTS,
    Settings,
    child_environment,
    load_settings,
    settings_table,
    suggest_settings,
)
from nexus_ops.errors import ConfigError
from nexus_ops.redact import MASK, mask_setting, redact


def test_defaults_are_safe(tmp_path: Path) -> None:
    settings = load_settings({}, directory=tmp_path)
    assert settings.env == "development"
    assert settings.agent_host == "127.0.0.1" and settings.opencode_host == "127.0.0.1"
    assert settings.agent_port == 1420 and settings.opencode_port == 4096
    assert not settings.allow_remote


@pytest.mark.parametrize("profile", sorted(PROFILE_DEFAULTS))
def test_each_profile_applies_its_defaults(profile: str, tmp_path: Path) -> None:
    settings = load_settings({"NEXUS_ENV": profile}, directory=tmp_path)
    for name, value in PROFILE_DEFAULTS[profile].items():
        assert getattr(settings, name) == value


def test_environment_beats_profile_file_beats_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "NEXUS_ENV=staging\nNEXUS_PROBE_FAILURES=7\nNEXUS_LOG_BACKUPS=2\n"
    )
    (tmp_path / ".env.staging").write_text("NEXUS_PROBE_FAILURES=8\n")
    settings = load_settings({"NEXUS_LOG_BACKUPS": "9"}, directory=tmp_path)
    assert settings.env == "staging"
    assert settings.probe_failures == 8
    assert settings.log_backups == 9


def test_every_bad_variable_is_listed_at_once(tmp_path: Path) -> None:
    bad = {
        "NEXUS_PROBE_TIMEOUT": "abc",
        "NEXUS_ENV": "prod",
        "NEXUS_OPENCODE_PORT": "99999",
        "NEXUS_PROBE_INTERVALL": "3",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(bad, directory=tmp_path)
    text = str(caught.value)
    assert "NEXUS_PROBE_TIMEOUT='abc'" in text and "number of seconds" in text
    assert "NEXUS_ENV='prod'" in text and "'production'" in text
    assert "NEXUS_OPENCODE_PORT='99999'" in text
    assert "did you mean NEXUS_PROBE_INTERVAL?" in text


def test_readiness_cannot_wait_longer_than_a_probe(tmp_path: Path) -> None:
    assert load_settings({"NEXUS_READY_TIMEOUT": "1"}, directory=tmp_path).ready_timeout == 1
    with pytest.raises(ConfigError) as caught:
        load_settings({"NEXUS_READY_TIMEOUT": "2"}, directory=tmp_path)
    text = str(caught.value)
    assert "NEXUS_READY_TIMEOUT='2'" in text and "more than NEXUS_PROBE_TIMEOUT (1 s)" in text


def test_the_hard_memory_limit_must_be_above_the_soft_one(tmp_path: Path) -> None:
    both = {"NEXUS_MEMORY_LIMIT_MB": "1000", "NEXUS_MEMORY_HARD_LIMIT_MB": "1500"}
    settings = load_settings(both, directory=tmp_path)
    assert (settings.memory_limit_mb, settings.memory_hard_limit_mb) == (1000, 1500)
    assert load_settings({"NEXUS_MEMORY_HARD_LIMIT_MB": "500"}, directory=tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_settings({**both, "NEXUS_MEMORY_HARD_LIMIT_MB": "1000"}, directory=tmp_path)
    text = str(caught.value)
    assert "NEXUS_MEMORY_HARD_LIMIT_MB='1000'" in text
    assert "is not above NEXUS_MEMORY_LIMIT_MB (1000 MiB" in text and "set it to 0" in text
    # The staging and production profiles set a soft limit of 4096 MiB.
    with pytest.raises(ConfigError, match=r"not above NEXUS_MEMORY_LIMIT_MB \(4096 MiB"):
        load_settings(
            {"NEXUS_ENV": "production", "NEXUS_MEMORY_HARD_LIMIT_MB": "3000"}, directory=tmp_path
        )
    for bad, expected in (("0", "greater than 0"), ("-1", "greater than 0"), ("x", "seconds")):
        with pytest.raises(ConfigError, match=rf"NEXUS_DRAIN_TIMEOUT='{bad}'.*{expected}"):
            load_settings({"NEXUS_DRAIN_TIMEOUT": bad}, directory=tmp_path)


def test_config_check_exits_non_zero_with_a_clear_message(tmp_path: Path) -> None:
    env = private_env(tmp_path, {"NEXUS_PROBE_TIMEOUT": "abc"})
    done = nexus_cli(env, "config", "check")
    assert done.returncode == 2
    assert "NEXUS_PROBE_TIMEOUT='abc'" in done.stderr
    assert "Traceback" not in done.stderr
    ok = nexus_cli(private_env(tmp_path / "ok"), "config", "check")
    assert ok.returncode == 0 and "valid" in ok.stdout


def test_agent_refuses_to_start_on_bad_settings(tmp_path: Path) -> None:
    env = private_env(tmp_path, {"NEXUS_BACKOFF_MAX": "-1"})
    done = nexus_cli(env, "agent", "run", timeout=30)
    assert done.returncode == 2 and "NEXUS_BACKOFF_MAX='-1'" in done.stderr


def test_config_show_lists_every_setting(tmp_path: Path) -> None:
    done = nexus_cli(private_env(tmp_path), "config", "show")
    assert done.returncode == 0
    for name in Settings.model_fields:
        assert f"NEXUS_{name.upper()}" in done.stdout


def test_secrets_are_masked() -> None:
    assert mask_setting("webhook_token", "s3cret") == MASK
    assert mask_setting("opencode_port", "4096") == "4096"
    assert mask_setting("prometheus_url", "http://u:pw@h:9090") == f"http://u:{MASK}@h:9090"
    assert redact("Authorization: Bearer abc.def", []) == f"Authorization: Bearer {MASK}"
    rows = {v: val for v, val, _ in settings_table(load_settings({}))}
    assert rows["NEXUS_AGENT_PORT"] == "1420"


def test_each_bad_value_names_where_it_was_given(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("NEXUS_ENV=staging\nNEXUS_PROBE_TIMEOUT=abc\n")
    (tmp_path / ".env.staging").write_text("NEXUS_AGENT_PORT=99999\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({"NEXUS_BACKOFF_MAX": "-1"}, directory=tmp_path)
    problems = [line for line in str(caught.value).splitlines() if line.startswith("  - ")]
    assert len(problems) == 3
    by_variable = {line.split("=")[0].strip(" -"): line for line in problems}
    assert by_variable["NEXUS_PROBE_TIMEOUT"].endswith(f"(from {tmp_path / '.env'})")
    assert by_variable["NEXUS_AGENT_PORT"].endswith(f"(from {tmp_path / '.env.staging'})")
    assert by_variable["NEXUS_BACKOFF_MAX"].endswith("(from the environment)")


@pytest.mark.parametrize(
    ("unknown", "meant"),
    [
        ("NEXUS_SAMPLE_INTERVAL", ["NEXUS_METRICS_INTERVAL"]),  # a word of the description
        ("NEXUS_PROBE_INTERVALL", ["NEXUS_PROBE_INTERVAL"]),  # a typo
        ("NEXUS_ALERTS_INTERVAL", ["NEXUS_ALERT_INTERVAL"]),
        ("NEXUS_WEBHOOK_URL", ["NEXUS_ALERT_WEBHOOK_URLS"]),
        ("NEXUS_BACKUP_CRON", ["NEXUS_BACKUP_SCHEDULE"]),
        ("NEXUS_LOGLEVEL", ["NEXUS_LOG_LEVEL"]),  # words run together: letters decide
        ("NEXUS_PORT", ["NEXUS_AGENT_PORT", "NEXUS_ENTRY_PORT", "NEXUS_CONSOLE_PORT"]),
        ("NEXUS_FOO", []),
    ],
)
def test_an_unknown_variable_gets_the_settings_it_may_mean(unknown: str, meant: list[str]) -> None:
    assert suggest_settings(unknown) == meant


def test_config_show_and_check_work_with_bad_settings(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "NEXUS_PROBE_TIMEOUT=abc\nNEXUS_SAMPLE_INTERVAL=2\nNEXUS_ALERT_WEBHOOK_TOKN=hunter2\n"
    )
    env = private_env(tmp_path / "root", {"NEXUS_BACKOFF_MAX": "-1"})
    refused = nexus_cli(env, "events", cwd=tmp_path)
    assert refused.returncode == 2 and "`nexus-ops config show`" in refused.stderr
    shown = nexus_cli(env, "config", "show", cwd=tmp_path)
    assert shown.returncode == 2 and "Traceback" not in shown.stderr
    lines = shown.stdout.splitlines()
    for name in Settings.model_fields:
        assert any(f" NEXUS_{name.upper()} " in line for line in lines), name
    row = {line.split()[1]: line for line in lines if line.startswith("BAD ")}
    assert set(row) == {
        "NEXUS_PROBE_TIMEOUT",
        "NEXUS_BACKOFF_MAX",
        "NEXUS_SAMPLE_INTERVAL",
        "NEXUS_ALERT_WEBHOOK_TOKN",
    }
    assert (
        " abc " in row["NEXUS_PROBE_TIMEOUT"]
        and f"[{tmp_path / '.env'}]" in row["NEXUS_PROBE_TIMEOUT"]
    )
    assert "[the environment]" in row["NEXUS_BACKOFF_MAX"]
    assert "hunter2" not in shown.stdout + shown.stderr
    assert "did you mean NEXUS_METRICS_INTERVAL?" in shown.stderr
    checked = nexus_cli(env, "config", "check", cwd=tmp_path)
    assert checked.returncode == 2 and "NEXUS_PROBE_TIMEOUT='abc'" in checked.stderr
    as_json = json.loads(nexus_cli(env, "config", "show", "--json", cwd=tmp_path).stdout)
    assert as_json["origins"]["NEXUS_BACKOFF_MAX"] == "the environment"
    assert set(as_json["problems"]) == set(row)


def test_a_child_gets_exactly_the_settings_read_here(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "NEXUS_ENV=production\nNEXUS_HOME=data\nNEXUS_PROBE_FAILURES=7\nNEXUS_ALLOW_REMOTE=1\n"
    )
    here = load_settings({"NEXUS_BACKOFF_INITIAL": "0.5"}, directory=tmp_path)
    env = child_environment(here, {"PATH": "/bin", "NEXUS_PROBE_FAILURES": "2"})
    assert env["PATH"] == "/bin" and env["NEXUS_PROBE_FAILURES"] == "7"
    assert here.home == tmp_path / "data"  # relative to the .env file's folder
    assert Path(env["NEXUS_HOME"]) == here.home
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert load_settings(env, directory=elsewhere) == here
