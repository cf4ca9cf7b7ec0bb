"""The console's Alerts tab against the agent's real API (the app in-process, evaluating)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import OVERFLOWING, check_on_a_phone, shot
from conftest import free_port, kill_everything_of, private_env, wait_for
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, expect
from test_console_e2e import console_env, interrupt, open_console, serve, tab

from nexus_ops.agent import DEFAULT_JOBS, create_app
from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.paths import Layout
from nexus_ops.ui import Console, PanelContext
from nexus_ops.ui.alerts import AlertsPanel

RULES = """
defaults: false
rules:
  - {name: ServerDown, metric: opencode_server_status, op: "<", value: 1, severity: critical,
     summary: The server is down}
  - {name: NeverSeen, kind: absent, metric: opencode_made_up, window: 1s, for: 1h}
  - {name: Quiet, metric: opencode_server_status, op: ">", value: 5}
"""


@pytest.fixture
def client(tmp_path: Path) -> Iterator[AgentClient]:
    """A real agent app that samples and evaluates (no server: it is down), and its client."""
    rules = tmp_path / "alerts.yml"
    rules.write_text(RULES)
    hook = f"http://hook:PLANTED-pw@127.0.0.1:{free_port()}/x"
    env = private_env(
        tmp_path,
        {
            "NEXUS_ALERTS_FILE": str(rules),
            "NEXUS_METRICS_INTERVAL": "0.2",
            "NEXUS_ALERT_INTERVAL": "0.2",
            "NEXUS_ALERT_WEBHOOK_URLS": hook,
            "NEXUS_ALERT_WEBHOOK_RETRIES": "0",
        },
    )
    settings = load_settings(env)
    app = create_app(settings, jobs=DEFAULT_JOBS, manage=False)
    token = Layout(settings.home).agent_token_file.read_text().strip()
    with TestClient(app, base_url="http://127.0.0.1") as http:
        yield AgentClient("http://127.0.0.1", token, transport=http._transport)  # type: ignore[attr-defined]


def test_the_alerts_tab_shows_states_webhooks_and_notices(client: AgentClient) -> None:
    wait_for(lambda: client.alerts().receivers[0].failed >= 1, 20, what="a failed delivery")
    panel = AlertsPanel(PanelContext(client=client))
    assert panel.refresh(), panel.banner.widget.value
    rules = panel.rules.value
    assert rules.index("ServerDown") < rules.index("NeverSeen") < rules.index("Quiet")
    assert (
        "<tr class='nx-event-crash'><td data-label='rule'><b>ServerDown</b></td>"
        "<td data-label='state'>firing</td>"
    ) in rules
    assert (
        "<tr class='nx-event-restart'><td data-label='rule'><b>NeverSeen</b></td>"
        "<td data-label='state'>pending</td>"
    ) in rules
    assert "opencode_server_status &lt; 1" in rules and "The server is down" in rules
    receivers = panel.receivers.value
    assert "hook:********@127.0.0.1" in receivers and "ConnectError" in receivers
    assert "PLANTED" not in receivers + rules + panel.recent.value
    assert "ServerDown" in panel.recent.value and "firing" in panel.recent.value


def test_the_alerts_tab_is_registered(client: AgentClient) -> None:
    made = Console(client)
    titles = list(made.tabs.titles)
    assert titles.index("Alerts") == titles.index("Events") + 1


BROWSER_RULES = """
defaults: true
rules:
  - {name: AgentMemory, metric: nexus_agent_resident_memory_bytes, op: ">", value: 3221225472}
  - {name: ServerCpu, metric: opencode_process_cpu_percent, op: ">", value: 90}
  - {name: SlowRequests, metric: opencode_request_duration_seconds, aggregate: p95, window: 1m,
     op: ">", value: 2.5}
"""

# The short cells of the rules table (rule, state, since, value, severity) whose text wraps.
WRAPPED_SHORT_CELLS = """
() => [...document.querySelectorAll('.nx-alerts-table td:nth-child(-n+5)')].filter((td) => {
  const range = document.createRange();
  range.selectNodeContents(td);
  const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
  return lines.size > 1;
}).map((td) => td.textContent)
"""

# A number as the agent sends it, unformatted: 3.99987e+08, 0.0424714, 3221225472.
RAW_NUMBER = re.compile(r"\d\.?\d*e[+-]\d+|\b0\.\d{3,}|\b\d{7,}\b")


@pytest.mark.browser
@pytest.mark.opencode
def test_the_alerts_tab_in_chromium_writes_values_for_people(
    browser: Browser, opencode_bin: Path, tmp_path: Path
) -> None:
    rules = tmp_path / "alerts.yml"
    rules.write_text(BROWSER_RULES)
    env = console_env(
        tmp_path, opencode_bin, NEXUS_ALERTS_FILE=str(rules), NEXUS_ALERT_INTERVAL="1"
    )
    served = serve(env)
    try:
        with served.client() as agent:
            assert agent.start().ok
        page = open_console(browser, served.url)
        tab(page, "Alerts")
        table = page.locator(".nx-alerts-rules")
        expect(table).to_contain_text("MiB", timeout=60_000)
        expect(table).to_contain_text(" ms", timeout=60_000)
        text = table.inner_text()
        assert RAW_NUMBER.findall(text) == [], text
        assert "> 3 GiB" in text and "> 90%" in text and "> 2.5 s" in text, text
        empty = page.locator(".nx-no-webhooks").inner_text()
        assert "NEXUS_ALERT_WEBHOOK_URLS=https://" in empty, empty
        assert "NEXUS_ALERTS_FILE" in empty and "docs/alerts.md" in empty, empty
        recent = page.locator(".nx-alerts-recent").inner_text()
        assert RAW_NUMBER.findall(recent) == [], recent
        page.set_viewport_size({"width": 1280, "height": 900})
        assert page.evaluate(WRAPPED_SHORT_CELLS) == []
        assert page.evaluate(OVERFLOWING) == []
        shot(page, "alerts-1280")
        check_on_a_phone(page, "alerts-412", ".nx-no-webhooks")
        page.close()
    finally:
        with contextlib.suppress(Exception):
            interrupt(served)
        kill_everything_of(env)
