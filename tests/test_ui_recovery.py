"""The console's Backups and Runbooks tabs, driven against a real agent and OpenCode server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backup_helpers import install_config
from conftest import RunningAgent, start_agent, wait_for

from nexus_ops.runbooks.models import ParamSpec
from nexus_ops.ui import PanelContext
from nexus_ops.ui.backups import BackupsPanel
from nexus_ops.ui.registry import TABS
from nexus_ops.ui.runbooks import RunbooksPanel, field_for, field_value


def in_line(work: Callable[[], object]) -> None:
    work()


@pytest.fixture
def running(nexus_env: dict[str, str], opencode_config: Path) -> Iterator[RunningAgent]:
    install_config(opencode_config, nexus_env)
    agent = start_agent(nexus_env)
    assert agent.client.start().ok
    yield agent
    agent.client.close()
    agent.stop()


def test_the_tabs_are_registered() -> None:
    titles = [spec.title for spec in TABS.specs()]
    assert "Backups" in titles and "Runbooks" in titles
    for spec in TABS.specs():
        if spec.title in ("Backups", "Runbooks"):
            assert callable(spec.resolve())


def test_fields_follow_the_declared_types() -> None:
    assert field_for(ParamSpec(name="dry_run", type="bool", default=True)).value is True
    assert field_for(ParamSpec(name="n", type="int", default=3)).value == 3
    parts = field_for(ParamSpec(name="parts", type="list[str]", default=["config", "data"]))
    assert parts.value == "config, data"
    assert field_value("list[str]", parts.value) == ["config", "data"]
    assert field_value("float", 2.5) == 2.5


@pytest.mark.opencode
def test_backups_tab_backs_up_verifies_prunes_and_restores(running: RunningAgent) -> None:
    panel = BackupsPanel(PanelContext(client=running.client, run=in_line))
    assert panel.refresh()
    assert "No backup yet" in panel.list.value and "0 2 * * *" in panel.schedule.value
    assert panel.buttons["verify"].disabled and panel.buttons["restore"].disabled

    panel.buttons["create"].click()
    assert "backup " in panel.banner.widget.value, panel.banner.widget.value
    [made] = running.client.backups()
    assert made.id in panel.list.value and panel.choice.value == made.id
    assert "Last success" in panel.schedule.value and "never" not in panel.schedule.value

    panel.buttons["verify"].click()
    assert "verifies" in panel.banner.widget.value
    panel.buttons["plan"].click()
    assert "would remove 0 backup(s)" in panel.banner.widget.value
    assert "nx-prune-plan" in panel.result.value

    panel.buttons["restore"].click()  # asks first
    assert panel.confirm.layout.display is None and "pre-restore" in panel.question.value
    assert len(running.client.backups()) == 1
    panel.confirm.children[1].click()  # Yes
    assert "restored" in panel.banner.widget.value, panel.banner.widget.value
    assert "the server is healthy" in panel.result.value
    kinds = sorted(b.kind for b in running.client.backups())
    assert kinds == ["manual", "pre-restore"]
    assert running.client.status().healthy


@pytest.mark.opencode
def test_runbooks_tab_runs_a_dry_run_at_once_and_asks_before_repairs(
    running: RunningAgent,
) -> None:
    panel = RunbooksPanel(PanelContext(client=running.client, run=in_line))
    assert panel.refresh()
    assert "backup" in panel.choice.options and "No runbook has run yet" in panel.runs.value
    chosen = panel.choice.options[0]  # chosen when the list arrives: Run can be pressed
    assert panel.choice.value == chosen and not panel.run_button.disabled
    assert panel.books[chosen].title in panel.about.value
    panel.choice.value = "backup"
    assert "Backup" in panel.about.value
    assert panel.fields["dry_run"].value is True

    panel.run_button.click()  # a dry run: no question
    assert panel.confirm.layout.display == "none"
    first = running.client.runs()[0]
    assert f"run {first.id}" in panel.banner.widget.value, panel.banner.widget.value
    assert first.who == "api:console" and first.parameters["dry_run"] is True
    running.client.wait_run(first.id, timeout=300)

    panel.fields["dry_run"].value = False
    panel.run_button.click()
    assert panel.confirm.layout.display is None and "dry_run off" in panel.question.value
    assert len(running.client.runs()) == 1
    panel.confirm.children[1].click()
    second = running.client.runs()[0]
    done = running.client.wait_run(second.id, timeout=300)
    assert done.status == "succeeded" and done.healthy, done.verdict
    deadline = time.monotonic() + 10
    while "healthy after" not in panel.runs.value and time.monotonic() < deadline:
        panel.refresh()
        time.sleep(0.2)
    assert "healthy after: create" in panel.runs.value
    wait_for(lambda: len(running.client.backups()) == 1, what="the backup of the run")
