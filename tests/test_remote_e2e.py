"""Remote access end to end: real Chromium over HTTPS, through the agent's own entry.

One module-scoped setup: ``nexus-ops console`` with ``NEXUS_ENTRY=on`` (the agent,
its Caddy asking the agent's real ``/entry/check``, Voila), the real OpenCode server
answering from the scripted model provider, all on loopback in a temporary HOME.
Chromium trusts the entry's local CA through ``--ignore-certificate-errors-spki-list``
holding the SHA-256 of the public key of the local CA's intermediate, which signs the
entry's leaves (certificates of any other key still fail).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from backup_helpers import install_config
from browser import CHROMIUM, CHROMIUM_ARGS
from conftest import ARTIFACTS, free_port, kill_everything_of, wait_for
from test_console_e2e import Served, console_env, interrupt, serve
from test_entry import serves_tls

from nexus_ops.client import AgentClient
from nexus_ops.entry.pairing import PER_ADDRESS
from nexus_ops.entry.tls import EntryFiles, pem_der
from nexus_ops.paths import Layout
from nexus_ops.workload.config import write_provider_config
from nexus_ops.workload.provider import ScriptedProvider
from nexus_ops.workload.script import Reply, Rule, Script

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Response

pytestmark = pytest.mark.opencode

ANSWER = "Greetings through the entry from the script"
SHOTS = ARTIFACTS / "remote"


def _tlv(data: bytes, at: int) -> tuple[int, int]:
    """Where the DER element at ``at`` has its content, and where it ends."""
    length, start = data[at + 1], at + 2
    if length & 0x80:
        size = length & 0x7F
        length, start = int.from_bytes(data[start : start + size], "big"), start + size
    return start, start + length


def spki_hash(der: bytes) -> str:
    """Base64 of the SHA-256 of a certificate's SubjectPublicKeyInfo (Chromium's SPKI pin)."""
    tbs, _ = _tlv(der, 0)
    at, _ = _tlv(der, tbs)
    if der[at] == 0xA0:  # the version
        at = _tlv(der, at)[1]
    for _ in range(5):  # serial, signature, issuer, validity, subject
        at = _tlv(der, at)[1]
    return base64.b64encode(hashlib.sha256(der[at : _tlv(der, at)[1]]).digest()).decode()


@dataclass
class Remote:
    served: Served
    agent: AgentClient
    provider: ScriptedProvider
    files: EntryFiles
    port: int
    password: str
    agent_token: str
    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    used_code: str = ""

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def https(self, cookie: str | None = None) -> httpx.Client:
        import ssl

        trust = ssl.create_default_context(cafile=str(self.files.root_cert))
        cookies = {"nexus_device": cookie} if cookie else {}
        return httpx.Client(base_url=self.url, verify=trust, cookies=cookies, timeout=30)

    def cookie(self) -> str:
        found = [c["value"] for c in self.context.cookies() if c["name"] == "nexus_device"]
        assert len(found) == 1, self.context.cookies()
        return found[0]


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


@pytest.fixture(scope="module")
def remote(
    opencode_bin: Path, opencode_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Remote]:
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("remote")
    port = free_port()
    env = console_env(
        root,
        opencode_bin,
        NEXUS_ENTRY="on",
        NEXUS_ENTRY_PORT=str(port),
        NEXUS_ENTRY_BIND="127.0.0.1",
        NEXUS_ENTRY_HOSTS="localhost,127.0.0.1",
        NEXUS_PAIRING_TTL="5",
    )
    install_config(opencode_config, env)
    script = Script(rules=[Rule(when="greet", then=Reply(text=ANSWER, tokens_per_second=40))])
    with ScriptedProvider(script) as provider:
        write_provider_config(Path(env["HOME"]), provider.base_url, Path(env["XDG_CONFIG_HOME"]))
        served = serve(env)
        agent = AgentClient.from_settings(served.settings, timeout=90.0)
        try:
            assert agent.start().ok
            files = EntryFiles.of(served.settings)
            wait_for(lambda: serves_tls(port, files), 60, what="the entry's TLS")
            layout = Layout(served.settings.home)
            password = layout.server_password_file.read_text().strip()
            token = (served.settings.home / "secrets" / "agent.token").read_text().strip()
            # Chromium matches the pin against the chain the entry serves (leaf and
            # intermediate; never the root, which only the devices hold).
            pin = spki_hash(pem_der(files.root_cert.with_name("intermediate.crt")))
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM,
                    headless=True,
                    args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pin}"],
                )
                context = browser.new_context(
                    ignore_https_errors=False, viewport={"width": 1280, "height": 900}
                )
                page = context.new_page()
                found = Remote(served, agent, provider, files, port, password, token, context, page)
                context.on("request", lambda request: found.requests.append(request.url))
                context.on("response", lambda response: found.responses.append(response))
                try:
                    yield found
                finally:
                    browser.close()
        finally:
            agent.close()
            with contextlib.suppress(Exception):
                interrupt(served)
            kill_everything_of(env)


@pytest.fixture(scope="module")
def paired(remote: Remote) -> Remote:
    """The browser, sent to the pairing page, types a code from the API and lands on the UI."""
    code = remote.agent.create_pairing(name="e2e browser").code
    page = remote.page
    page.goto(f"{remote.url}/")
    assert page.url.startswith(f"{remote.url}/_nexus/pair?next="), page.url
    page.fill("#code", code)
    shot(page, "pairing-page")
    page.click("button[type=submit]")
    page.wait_for_url(f"{remote.url}/", timeout=30_000)
    remote.used_code = code
    return remote


def test_the_browser_pairs_and_lands_on_opencodes_web_ui(paired: Remote) -> None:
    page = paired.page
    page.wait_for_function("() => document.body && document.body.innerText.trim().length > 0")
    page.wait_for_timeout(2000)  # the web UI draws itself after its scripts load
    shot(page, "web-ui")
    assert "opencode" in page.content().lower()
    devices = paired.agent.devices()
    assert [d.name for d in devices] == ["e2e browser"]
    assert devices[0].address == "127.0.0.1"


STREAM_A_PROMPT = """
async (answer) => {
  const events = await fetch('/event');
  if (!events.ok) return {error: `GET /event: ${events.status}`};
  const reader = events.body.getReader();
  const decoder = new TextDecoder();
  const created = await fetch('/session', {method: 'POST', headers: {'Content-Type':
    'application/json'}, body: '{}'});
  if (!created.ok) return {error: `POST /session: ${created.status} ${await created.text()}`};
  const session = (await created.json()).id;
  const sent = await fetch(`/session/${session}/prompt_async`, {method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({parts: [{type: 'text', text: 'please greet me'}]})});
  if (sent.status !== 204) return {error: `prompt_async: ${sent.status}`};
  let seen = '';
  const types = [];
  const until = Date.now() + 60000;
  while (Date.now() < until) {
    const {value, done} = await reader.read();
    if (done) break;
    seen += decoder.decode(value, {stream: true});
    for (const line of seen.split('\\n')) {
      if (line.startsWith('data: ')) {
        try { types.push(JSON.parse(line.slice(6)).type); } catch (e) {}
      }
    }
    if (seen.includes(answer) && seen.includes('session.idle')) break;
  }
  reader.cancel();
  return {session, answered: seen.includes(answer), types: [...new Set(types)]};
}
"""


def test_a_prompt_streams_its_scripted_answer_through_the_entry(paired: Remote) -> None:
    result = paired.page.evaluate(STREAM_A_PROMPT, ANSWER)
    assert "error" not in result, result
    assert result["answered"], result
    assert "message.part.updated" in result["types"], result
    assert paired.provider.requests(), "the scripted provider was never asked"


TERMINAL = """
async () => {
  const created = await fetch('/pty', {method: 'POST', headers: {'Content-Type':
    'application/json'}, body: JSON.stringify({command: '/bin/sh'})});
  if (!created.ok) return {error: `POST /pty: ${created.status} ${await created.text()}`};
  const pty = (await created.json()).id;
  const token = await fetch(`/pty/${pty}/connect-token`, {method: 'POST',
    headers: {'x-opencode-ticket': '1'}});
  if (!token.ok) return {error: `connect-token: ${token.status} ${await token.text()}`};
  const ticket = (await token.json()).ticket;
  const seen = await new Promise((resolve) => {
    const ws = new WebSocket(`wss://${location.host}/pty/${pty}/connect?ticket=${ticket}`);
    let out = '';
    const done = (why) => { ws.close(); resolve(why + out); };
    setTimeout(() => done('timeout: '), 20000);
    ws.onerror = () => done('error: ');
    ws.onopen = () => ws.send('echo terminal-$((40+2))\\n');
    ws.onmessage = async (m) => {
      out += typeof m.data === 'string' ? m.data : await m.data.text();
      if (out.includes('terminal-42\\r\\n')) done('ok: ');
    };
  });
  await fetch(`/pty/${pty}`, {method: 'DELETE'});
  return {seen};
}
"""


def test_the_web_uis_terminal_runs_a_command_over_its_websocket(paired: Remote) -> None:
    result = paired.page.evaluate(TERMINAL)
    assert "error" not in result, result
    assert result["seen"].startswith("ok: "), result


def test_the_console_opens_through_the_same_entry(paired: Remote) -> None:
    token = paired.served.url.split("token=", 1)[1]
    page = paired.page
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url.split("?")[0]))
    page.on("websocket", lambda ws: ws.on("socketerror", lambda e: sockets.append(f"error {e}")))
    page.on("websocket", lambda ws: ws.on("close", lambda _: sockets.append("closed")))
    page.goto(f"{paired.url}/console/?token={token}")
    try:
        page.wait_for_selector(".nx-console .nx-start", timeout=60_000)
    finally:
        shot(page, "console")
    assert "error" not in " ".join(sockets), sockets
    assert page.url.startswith(f"{paired.url}/console/")


def test_nothing_the_browser_received_holds_a_secret(paired: Remote) -> None:
    page = paired.page
    secrets = {"OpenCode's password": paired.password, "the agent's token": paired.agent_token}
    basic = base64.b64encode(f"opencode:{paired.password}".encode()).decode()
    secrets["OpenCode's Basic credentials"] = basic
    seen = {
        "page HTML": page.content(),
        "document.cookie": page.evaluate("() => document.cookie"),
        "localStorage": page.evaluate("() => JSON.stringify(Object.entries(localStorage))"),
        "sessionStorage": page.evaluate("() => JSON.stringify(Object.entries(sessionStorage))"),
        "request URLs": "\n".join(paired.requests),
        "response headers": json.dumps([r.headers for r in paired.responses]),
    }
    assert "nexus_device" not in seen["document.cookie"]  # HttpOnly
    assert len(paired.requests) > 10
    for where, text in seen.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} is in the {where}"


def test_concurrent_event_streams_each_get_their_events(paired: Remote) -> None:
    cookie = paired.cookie()
    streams = 20
    got: list[list[str]] = [[] for _ in range(streams)]
    ready = threading.Barrier(streams + 1, timeout=60)

    def listen(n: int) -> None:
        with paired.https(cookie) as client, client.stream("GET", "/event") as answer:
            assert answer.status_code == 200
            ready.wait()
            for line in answer.iter_lines():
                if line.startswith("data: "):
                    got[n].append(json.loads(line[6:])["type"])
                if "session.created" in got[n]:
                    return

    threads = [threading.Thread(target=listen, args=(n,), daemon=True) for n in range(streams)]
    for thread in threads:
        thread.start()
    ready.wait()
    with paired.https(cookie) as client:
        assert client.post("/session", json={}).status_code == 200
    for thread in threads:
        thread.join(timeout=30)
    assert all("session.created" in types for types in got), got


def submit(client: httpx.Client, code: str) -> httpx.Response:
    return client.post("/_nexus/pair", data={"code": code, "name": "", "next": "/"})


def test_a_reused_or_an_expired_code_is_refused(paired: Remote) -> None:
    with paired.https() as client:
        again = submit(client, paired.used_code)
        assert again.status_code == 400 and "used already" in again.text
        late = paired.agent.create_pairing().code
        time.sleep(5.2)  # NEXUS_PAIRING_TTL=5
        expired = submit(client, late)
        assert expired.status_code == 400 and "expired" in expired.text
        assert "set-cookie" not in again.headers and "set-cookie" not in expired.headers


def test_a_revoked_device_is_refused_at_its_next_request(paired: Remote) -> None:
    cookie = paired.cookie()
    with paired.https(cookie) as client:
        assert client.get("/global/health").status_code == 200
    device = paired.agent.devices()[0].id
    revoked = httpx.delete(
        f"{paired.agent.base_url}/api/v1/devices/{device}",
        headers={"Authorization": f"Bearer {paired.agent_token}"},
        timeout=10,
    )
    assert revoked.status_code == 200, revoked.text
    status = paired.page.evaluate("async () => (await fetch('/global/health')).status")
    assert status == 401
    with paired.https(cookie) as client:
        assert client.get("/global/health").status_code == 401
        page = client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 302 and page.headers["location"].startswith("/_nexus/pair")


def test_a_burst_of_wrong_codes_gets_429(paired: Remote) -> None:
    right = paired.agent.create_pairing().code
    wrong = "2222-2222" if right != "2222-2222" else "3333-3333"
    with paired.https() as client:
        # The used and the expired code above count among this address's failures.
        answers = [submit(client, wrong).status_code for _ in range(PER_ADDRESS)]
        assert set(answers) == {400, 429} and answers == sorted(answers), answers
        limited = submit(client, right)
    assert limited.status_code == 429 and "retry-after" in limited.headers
    assert "set-cookie" not in limited.headers
