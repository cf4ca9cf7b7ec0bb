"""The console through the HTTPS entry: real Caddy in front of the real console's Voila.

``forward_auth`` asks the stand-in of the agent's ``/entry/check``
(tests/entry_helpers.py); the console is ``nexus-ops console``, as an operator starts it.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import free_port, kill_everything_of, wait_for
from entry_helpers import GOOD, AuthServer
from test_console_e2e import Served, console_env, interrupt, serve
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from nexus_ops.entry.caddy import CaddyEntry

pytestmark = pytest.mark.opencode


@dataclass
class Through:
    served: Served
    entry: CaddyEntry

    @property
    def url(self) -> str:
        return f"https://localhost:{self.entry.settings.entry_port}"

    @property
    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.entry.files.root_cert))

    def client(self, cookie: bool = True) -> httpx.Client:
        cookies = {"nexus_device": GOOD} if cookie else {}
        return httpx.Client(base_url=self.url, verify=self.trust, cookies=cookies, timeout=120)


@pytest.fixture(scope="module")
def through(opencode_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Through]:
    root = tmp_path_factory.mktemp("entry-console")
    env = console_env(root, opencode_bin)
    served = serve(env)
    try:
        with AuthServer("unused") as auth:
            settings = served.settings.model_copy(
                update={
                    "home": root / "entry-home",
                    "entry_port": free_port(),
                    "entry_bind": "127.0.0.1",
                    "entry_hosts": "localhost",
                }
            )
            entry = CaddyEntry(settings, auth=auth.dial)
            entry.start()
            try:
                wait_for(lambda: entry.files.root_cert.is_file(), 30, what="the local CA")
                yield Through(served, entry)
            finally:
                entry.stop()
    finally:
        with contextlib.suppress(Exception):
            interrupt(served)
        kill_everything_of(env)


def test_the_console_answers_directly_and_through_the_entry(through: Through) -> None:
    token = through.served.url.split("token=", 1)[1]
    assert through.served.url.startswith("http://127.0.0.1:")
    assert "/console/?token=" in through.served.url
    direct = httpx.get(through.served.url, timeout=120)
    assert direct.status_code == 200 and "kernelId" in direct.text
    with through.client() as client:
        page = client.get(f"/console/?token={token}")
    assert page.status_code == 200
    assert "kernelId" in page.text


def test_the_console_wants_a_device_session(through: Through) -> None:
    with through.client(cookie=False) as client:
        browser = client.get("/console/", headers={"Accept": "text/html"})
        script = client.get("/console/voila/files/x.js")
    assert browser.status_code == 302
    assert browser.headers["location"] == "/_nexus/pair?next=%2Fconsole%2F"
    assert script.status_code == 401


def test_the_kernel_websocket_passes_for_the_entrys_own_origin_only(through: Through) -> None:
    token = through.served.url.split("token=", 1)[1]
    with through.client() as client:
        page = client.get(f"/console/?token={token}")
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    kernel = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', page.text)
    assert kernel, "no kernel id in the console page"
    url = f"wss://localhost:{through.entry.settings.entry_port}/console/api/kernels/{kernel[1]}"
    headers = {"Cookie": cookie}
    with connect(
        url + "/channels", ssl=through.trust, origin=through.url, additional_headers=headers
    ) as ws:  # type: ignore[arg-type]
        ws.ping().wait(timeout=30)
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(
            url + "/channels",
            ssl=through.trust,
            origin="https://evil.example",
            additional_headers=headers,
        ),  # type: ignore[arg-type]
    ):
        pass
    assert refused.value.response.status_code == 403
