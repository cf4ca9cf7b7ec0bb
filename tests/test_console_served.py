"""A served console: a second start, the Host guard (and the agent's), a log without the token.

A DNS-rebinding page reaches a server on 127.0.0.1 under its own name: every request
whose Host is not a name of the server is refused, before any route.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import RunningAgent, kill_everything_of, nexus_cli, start_agent
from test_console_e2e import Served, console_env, serve
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from nexus_ops.config import load_settings
from nexus_ops.console import RECORD, console_root
from nexus_ops.errors import ConfigError
from nexus_ops.paths import Layout
from nexus_ops.ui.figurewidget import ASSET

EVIL = "evil.example"


@pytest.fixture(scope="module")
def served(opencode_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    env = console_env(
        tmp_path_factory.mktemp("hosts"), opencode_bin, NEXUS_ALLOWED_HOSTS="console.lan"
    )
    running = serve(env)
    yield running
    running.process.send_signal(signal.SIGINT)
    running.process.wait(timeout=60)
    kill_everything_of(env)


@pytest.fixture
def agent_with_names(nexus_env: dict[str, str]) -> Iterator[RunningAgent]:
    running = start_agent({**nexus_env, "NEXUS_ALLOWED_HOSTS": "agent.lan"})
    yield running
    running.client.close()
    running.stop()


def test_a_second_console_shows_the_running_one(served: Served) -> None:
    record = (console_root(served.settings) / RECORD).read_text()
    again = nexus_cli(served.env, "console", timeout=60)
    assert again.returncode == 0, again.stderr
    assert f"a console already runs: {served.url}" in again.stdout
    assert (console_root(served.settings) / RECORD).read_text() == record, "Voila left alone"
    assert served.process.poll() is None
    assert httpx.head(f"{served.base}/voila/files/{ASSET}", timeout=30).status_code == 200


def test_the_agent_refuses_a_foreign_host_on_every_route(agent_with_names: RunningAgent) -> None:
    base = agent_with_names.client.base_url
    token = Layout(agent_with_names.settings.home).agent_token_file.read_text().strip()
    bearer = {"Authorization": f"Bearer {token}"}
    for path in ("/health", "/ready", "/metrics", "/api/v1/status", "/nowhere"):
        refused = httpx.get(base + path, headers={**bearer, "Host": EVIL}, timeout=30)
        assert refused.status_code == 403, path
        body = refused.json()
        assert EVIL in body["error"] and "NEXUS_ALLOWED_HOSTS" in body["hint"]
    refused = httpx.post(f"{base}/api/v1/server/stop", headers={**bearer, "Host": EVIL})
    assert refused.status_code == 403
    port = agent_with_names.settings.agent_port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "agent.lan", f"[::1]:{port}"):
        assert httpx.get(f"{base}/health", headers={"Host": host}).status_code == 200, host
    # What Prometheus sends when it scrapes 127.0.0.1.
    scraped = httpx.get(f"{base}/metrics", headers=bearer, timeout=30)
    assert scraped.status_code == 200 and "opencode_server_status" in scraped.text


def test_the_console_refuses_a_foreign_host_on_every_route(served: Served) -> None:
    token = served.url.split("token=", 1)[1]
    for path in (f"/?token={token}", f"/voila/files/{ASSET}", "/login", "/api/kernels"):
        refused = httpx.get(served.base + path, headers={"Host": f"{EVIL}:8866"}, timeout=30)
        assert refused.status_code == 403, path
        assert EVIL in refused.text and "NEXUS_ALLOWED_HOSTS" in refused.text
        assert token not in refused.text
    port = served.settings.console_port
    for host in (f"localhost:{port}", f"console.lan:{port}"):
        shown = httpx.get(served.url, headers={"Host": host}, timeout=60)
        assert shown.status_code == 200 and "nx-" in shown.text, host


def test_the_console_log_holds_no_token(served: Served) -> None:
    token = served.url.split("token=", 1)[1]
    wrong = "Wr0ngT0kenWr0ngT0kenWr0ngT0ken12"
    for query in (f"?token={wrong}", f"?token={token}"):
        for path in ("/", "/voila/files/nothing.js"):
            httpx.get(served.base + path + query, timeout=60)
        httpx.get(served.base + "/" + query, headers={"Host": EVIL}, timeout=30)
    log = Layout(served.settings.home).logs / "console.log"
    text = log.read_text(errors="replace")
    assert "403 GET /console/voila/files/nothing.js?token=********" in text  # refused, logged
    assert token not in text and wrong not in text


def test_allowed_hosts_must_be_names() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"NEXUS_ALLOWED_HOSTS": "console.lan,http://x.example/"})
    assert "NEXUS_ALLOWED_HOSTS" in str(caught.value)
    assert load_settings({"NEXUS_ALLOWED_HOSTS": " a.lan , 10.0.0.5 "}).extra_hosts == [
        "a.lan",
        "10.0.0.5",
    ]


def kernel_channels(served: Served) -> tuple[str, dict[str, str]]:
    """The websocket URL of the kernel that showing the console page started, and the
    cookie that the page's token login left (what a browser sends, whatever the page)."""
    page = httpx.get(served.url, timeout=120)
    assert page.status_code == 200
    match = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', page.text)
    assert match, "no kernel id in the console page"
    cookie = "; ".join(f"{name}={value}" for name, value in page.cookies.items())
    assert cookie, "the token login set no cookie"
    host = served.base.split("://", 1)[1]
    return f"ws://{host}/api/kernels/{match[1]}/channels", {"Cookie": cookie}


def test_the_console_refuses_a_cross_origin_kernel_websocket(served: Served) -> None:
    """A page of another site must not drive the console's kernel (it runs code), even
    in a browser that holds the console's login cookie."""
    url, cookie = kernel_channels(served)
    evil = Origin(f"http://{EVIL}")
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(url, origin=evil, additional_headers=cookie),
    ):
        pass
    assert refused.value.response.status_code == 403
    with connect(url, origin=Origin(served.base), additional_headers=cookie) as same_origin:
        same_origin.ping().wait(timeout=30)
