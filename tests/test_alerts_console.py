"""The console's Alerts tab against the agent's real API (the app in-process, evaluating)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, private_env, wait_for
from fastapi.testclient import TestClient

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
