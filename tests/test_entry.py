"""The HTTPS entry: real Caddy in front of the real OpenCode server, TLS from its local CA.

One agent runs with ``NEXUS_ENTRY=on`` (its Caddy is restarted when killed); a second
Caddy, built from the same configuration but with ``forward_auth`` pointed at a small
stand-in of the agent's ``/entry/check`` (tests/entry_helpers.py), carries the routing
tests. Both are started once for the module.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import (
    ROOT,
    RunningAgent,
    free_port,
    kill_everything_of,
    nexus_cli,
    private_env,
    start_agent,
    wait_for,
)
from entry_helpers import DEVICE, GOOD, AuthServer

from nexus_ops.entry.caddy import CaddyEntry
from nexus_ops.entry.tls import EntryFiles, fingerprint_of, not_after, pem_der
from nexus_ops.paths import Layout
from nexus_ops.process import load_record
from nexus_ops.security.posture import entry

pytestmark = pytest.mark.opencode


@dataclass
class Stack:
    agent: RunningAgent
    auth: AuthServer
    entry: CaddyEntry  # the test's Caddy, whose forward_auth asks the stand-in
    password: str

    @property
    def url(self) -> str:
        return f"https://localhost:{self.entry.settings.entry_port}"

    def trust(self, files: EntryFiles | None = None) -> ssl.SSLContext:
        root = (files or self.entry.files).root_cert
        return ssl.create_default_context(cafile=str(root))

    def client(self, cookie: bool = True) -> httpx.Client:
        cookies = {"nexus_device": GOOD} if cookie else {}
        return httpx.Client(base_url=self.url, verify=self.trust(), cookies=cookies, timeout=30)


def serves_tls(port: int, files: EntryFiles) -> bool:
    if not files.root_cert.is_file():
        return False
    context = ssl.create_default_context(cafile=str(files.root_cert))
    response = httpx.get(f"https://localhost:{port}/_nexus/ping", verify=context, timeout=2)
    return response.status_code > 0


@pytest.fixture(scope="module")
def stack(opencode_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("entry")
    env = private_env(
        root,
        {
            "NEXUS_OPENCODE_BIN": str(opencode_bin),
            "NEXUS_ENTRY": "on",
            "NEXUS_ENTRY_PORT": str(free_port()),
            "NEXUS_ENTRY_BIND": "127.0.0.1",
            "NEXUS_ENTRY_HOSTS": "localhost,127.0.0.1",
        },
    )
    agent = start_agent(env)
    entry: CaddyEntry | None = None
    try:
        assert agent.client.start().ok
        password = Layout(agent.settings.home).server_password_file.read_text().strip()
        with AuthServer(password) as auth:
            settings = agent.settings.model_copy(
                update={"home": root / "test-entry", "entry_port": free_port()}
            )
            entry = CaddyEntry(settings, auth=auth.dial)
            entry.start()
            wait_for(lambda: serves_tls(settings.entry_port, entry.files), 30, what="TLS")
            yield Stack(agent, auth, entry, password)
    finally:
        if entry is not None:
            entry.stop()
        agent.client.close()
        with contextlib.suppress(Exception):
            agent.stop()
        kill_everything_of(env)


def test_browser_without_a_device_cookie_is_sent_to_pairing(stack: Stack) -> None:
    with stack.client(cookie=False) as client:
        answer = client.get("/session?x=1", headers={"Accept": "text/html,*/*"})
    assert answer.status_code == 302
    assert answer.headers["location"] == "/_nexus/pair?next=%2Fsession%3Fx%3D1"
    seen = stack.auth.seen[-1]
    assert seen["x-forwarded-uri"] == "/session?x=1"
    assert seen["x-forwarded-method"] == "GET"
    assert seen["x-forwarded-proto"] == "https"


def test_api_request_without_a_device_cookie_gets_401_with_a_hint(stack: Stack) -> None:
    with stack.client(cookie=False) as client:
        answer = client.get("/global/health", headers={"Accept": "application/json"})
    assert answer.status_code == 401
    assert set(answer.json()) == {"error", "hint"}


def test_device_cookie_reaches_opencode_without_its_password(stack: Stack) -> None:
    direct = httpx.get(f"{stack.agent.settings.opencode_base_url}/global/health", timeout=10)
    assert direct.status_code == 401  # OpenCode wants its password ...
    with stack.client() as client:
        health = client.get("/global/health")
        page = client.get("/", headers={"Accept": "text/html"})
    assert health.status_code == 200, health.text  # ... which the entry added upstream
    assert health.json()["healthy"] is True
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "authorization" not in {k.lower() for k in page.headers}  # never to the browser
    assert stack.auth.seen[-1].get("cookie", "").find(GOOD) >= 0


def test_a_client_authorization_header_is_replaced(stack: Stack) -> None:
    wrong = {"Authorization": "Basic b3BlbmNvZGU6d3Jvbmc="}  # opencode:wrong
    with stack.client() as client:
        answer = client.get("/global/health", headers=wrong)
    assert answer.status_code == 200, answer.text


def test_the_event_stream_passes_through_the_entry(stack: Stack) -> None:
    with stack.client() as client, client.stream("GET", "/event") as events:
        assert events.status_code == 200
        assert "text/event-stream" in events.headers["content-type"]
        lines = events.iter_lines()
        first = next(lines)  # server.connected: the stream is open before the session
        assert first.startswith("data:")
        created = client.post("/session", json={})
        assert created.status_code == 200, created.text
        session = created.json()["id"]
        deadline = time.monotonic() + 30
        for line in lines:
            if session in line:
                break
            assert time.monotonic() < deadline, "no event of the new session"
        event = json.loads(line.removeprefix("data:"))
        assert event["type"].startswith("session.")


def test_the_local_ca_is_private_and_its_certificate_is_valid(stack: Stack) -> None:
    files = stack.entry.files
    for key in files.ca_keys:
        assert key.stat().st_mode & 0o777 == 0o600
    assert files.config.stat().st_mode & 0o777 == 0o600
    assert json.loads(files.config.read_text())["admin"] == {"disabled": True}
    leaf = files.leaf_cert("localhost")
    context = stack.trust()
    port = stack.entry.settings.entry_port
    import socket

    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        peer = tls.getpeercert()
        der = tls.getpeercert(binary_form=True)
    assert der == pem_der(leaf)
    expected = ssl.cert_time_to_seconds(str(peer["notAfter"]))
    assert not_after(der).timestamp() == expected


def test_entry_ca_prints_the_root_and_its_fingerprint(stack: Stack) -> None:
    done = nexus_cli(stack.agent.env, "entry", "ca")
    assert done.returncode == 0, done.stderr
    files = EntryFiles.of(stack.agent.settings)
    assert str(files.root_cert) in done.stdout
    assert fingerprint_of(pem_der(files.root_cert)) in done.stdout


def test_security_check_reports_the_entry(stack: Stack) -> None:
    done = nexus_cli(stack.agent.env, "security", "check", "--json")
    items = {item["name"]: item for item in json.loads(done.stdout)["items"]}
    entry = items["https entry"]
    assert entry["status"] == "pass", entry
    assert entry["details"]["tls"] == "internal"
    assert entry["details"]["bind"] == "127.0.0.1"
    assert entry["details"]["expires"] > time.time()


def test_the_agent_restarts_its_caddy_after_kill_9(stack: Stack) -> None:
    settings = stack.agent.settings
    files = EntryFiles.of(settings)
    port = settings.entry_port
    wait_for(lambda: serves_tls(port, files), 30, what="the agent's entry")
    record = load_record(files.pidfile)
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)

    def restarted() -> bool:
        again = load_record(files.pidfile)
        return again is not None and again.pid != record.pid and serves_tls(port, files)

    wait_for(restarted, 30, what="Caddy restarted by the agent")
    log = (Layout(settings.home).logs / "entry.log").read_text()
    assert log.count("serving initial configuration") >= 2


def test_own_certificate_is_served(stack: Stack, tmp_path: Path) -> None:
    source = stack.entry.files.leaf_cert("localhost")
    cert, key = tmp_path / "entry.crt", tmp_path / "entry.key"
    cert.write_bytes(source.read_bytes())
    key.write_bytes(source.with_suffix(".key").read_bytes())
    key.chmod(0o600)
    settings = stack.entry.settings.model_copy(
        update={
            "home": tmp_path / "own",
            "entry_port": free_port(),
            "entry_cert": cert,
            "entry_key": key,
        }
    )
    own = CaddyEntry(settings, auth=stack.auth.dial)
    own.start()
    try:
        url = f"https://localhost:{settings.entry_port}/global/health"

        def answers() -> int:
            return httpx.get(url, verify=stack.trust(), cookies={"nexus_device": GOOD}).status_code

        assert wait_for(answers, 30, what="the own certificate") == 200
        assert not own.files.authority.exists()  # no local CA made
    finally:
        own.stop()


def test_device_header_stays_with_the_entry(stack: Stack) -> None:
    with stack.client() as client:
        answer = client.get("/global/health")
    assert answer.status_code == 200
    assert DEVICE not in json.dumps(dict(answer.headers))


def test_the_agent_makes_a_loosened_ca_key_private_again(stack: Stack) -> None:
    files = EntryFiles.of(stack.agent.settings)
    key = files.ca_keys[0]
    key.chmod(0o644)
    wait_for(lambda: key.stat().st_mode & 0o777 == 0o600, 10, what="the CA key made 0600")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"NEXUS_ENTRY_BIND": "every-interface"}, "NEXUS_ENTRY_BIND='every-interface'"),
        ({"NEXUS_ENTRY_TLS": "maybe"}, "NEXUS_ENTRY_TLS='maybe'"),
        ({"NEXUS_ENTRY_PORT": "70000"}, "NEXUS_ENTRY_PORT='70000'"),
        ({"NEXUS_ENTRY_HOSTS": "https://a.lan"}, "NEXUS_ENTRY_HOSTS='https://a.lan'"),
        ({"NEXUS_ENTRY_CADDY_BIN": "/nonexistent/caddy"}, "is not an executable file"),
        ({"NEXUS_ENTRY_CERT": "/etc/hostname"}, "NEXUS_ENTRY_CERT is set but NEXUS_ENTRY_KEY"),
    ],
)
def test_a_bad_entry_setting_stops_the_agent_with_what_to_fix(
    given: dict[str, str], expected: str, tmp_path: Path
) -> None:
    env = private_env(tmp_path, {"NEXUS_ENTRY": "on", **given})
    for command in (("entry", "check"), ("agent", "run")):
        done = nexus_cli(env, *command, timeout=60)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert expected in done.stderr
        assert "Traceback" not in done.stderr
        assert "hint:" in done.stderr


def test_own_key_readable_by_others_or_not_pem_is_refused(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("not a certificate\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    env = private_env(tmp_path, {"NEXUS_ENTRY_CERT": str(cert), "NEXUS_ENTRY_KEY": str(key)})
    done = nexus_cli(env, "entry", "check")
    assert done.returncode == 2
    assert f"NEXUS_ENTRY_CERT={cert} is not a PEM file" in done.stderr
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    done = nexus_cli(env, "entry", "check")
    assert f"NEXUS_ENTRY_KEY={key} can be read by other users (mode 0644)" in done.stderr
    assert f"chmod 600 {key}" in done.stderr


def nginx_block(doc: Path) -> str:
    """The nginx configuration of docs/remote-access.md, as written there."""
    text = doc.read_text(encoding="utf-8")
    start = text.index("```nginx\n", text.index("**nginx** (`auth_request`)")) + len("```nginx\n")
    return text[start : text.index("```", start)]


@pytest.fixture(scope="module")
def nginx(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's nginx running the documented configuration, in front of the same parts."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.fail("nginx is missing: `apt-get install nginx` (make system-deps)")
    root = tmp_path_factory.mktemp("nginx")
    leaf = stack.entry.files.leaf_cert("localhost")
    port = free_port()
    block = nginx_block(ROOT / "docs" / "remote-access.md")
    for old, new in (
        ("127.0.0.1:1420", stack.auth.dial),
        ("127.0.0.1:4096", f"127.0.0.1:{stack.agent.settings.opencode_port}"),
        ("listen 8443 ", f"listen 127.0.0.1:{port} "),
        ("/etc/ssl/ops.crt", str(leaf)),
        ("/etc/ssl/ops.key", str(leaf.with_suffix(".key"))),
    ):
        assert old in block, old
        block = block.replace(old, new)
    temps = "".join(f"{kind}_temp_path {root}/{kind};\n" for kind in TEMP_PATHS)
    (root / "nginx.conf").write_text(
        f"user {getpass.getuser()};\npid {root}/nginx.pid;\nerror_log {root}/error.log info;\n"
        f"events {{}}\nhttp {{\naccess_log off;\n{temps}{block}\n}}\n"
    )
    process = subprocess.Popen(
        [binary, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
        stderr=subprocess.STDOUT,
        stdout=(root / "out.log").open("wb"),
    )
    try:
        url = f"https://localhost:{port}"
        wait_for(lambda: httpx.get(url, verify=stack.trust()).status_code, 20, what="nginx")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def test_behind_nginx_auth_request_as_documented(stack: Stack, nginx: str) -> None:
    trust = stack.trust()
    with httpx.Client(base_url=nginx, verify=trust, timeout=30) as anonymous:
        browser = anonymous.get("/session", headers={"Accept": "text/html"})
        api = anonymous.get("/global/health")
    assert browser.status_code == 302
    assert browser.headers["location"].endswith("/_nexus/pair?next=/session")
    assert api.status_code == 401 and set(api.json()) == {"error", "hint"}
    cookies = {"nexus_device": GOOD}
    wrong = {"Authorization": "Basic b3BlbmNvZGU6d3Jvbmc="}
    with httpx.Client(base_url=nginx, verify=trust, cookies=cookies, timeout=30) as device:
        assert device.get("/global/health", headers=wrong).json()["healthy"] is True
        assert device.get("/", headers={"Accept": "text/html"}).status_code == 200
        with device.stream("GET", "/event") as events:
            assert events.status_code == 200
            assert next(events.iter_lines()).startswith("data:")


def test_entry_status_shows_the_running_entry(stack: Stack) -> None:
    done = nexus_cli(stack.agent.env, "entry", "status", "--json")
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    record = load_record(EntryFiles.of(stack.agent.settings).pidfile)
    assert record is not None and state["pid"] == record.pid
    assert state["on"] is True and state["tls"] == "internal"
    port = stack.agent.settings.entry_port
    assert state["urls"] == [f"https://localhost:{port}/", f"https://127.0.0.1:{port}/"]
    assert state["expiry_source"] == "served"


def test_security_check_fails_on_a_ca_key_others_can_read(stack: Stack) -> None:
    key = stack.entry.files.ca_keys[0]  # the test's Caddy: no agent puts it back
    key.chmod(0o640)
    try:
        item = entry(stack.entry.settings)
    finally:
        key.chmod(0o600)
    assert item.status == "fail"
    assert f"{key} (0640)" in item.summary and "chmod 600" in item.fix
    assert entry(stack.entry.settings).status == "pass"


def test_the_entrys_log_holds_no_password_and_no_session(stack: Stack) -> None:
    log = (Layout(stack.entry.settings.home).logs / "entry.log").read_text()
    assert '"Authorization":["REDACTED"]' in log  # the cut event stream was logged, masked
    assert stack.password not in log and GOOD not in log


def test_caddy_stops_with_the_agent(stack: Stack) -> None:
    """Last in this module: it stops the module's agent."""
    record = load_record(EntryFiles.of(stack.agent.settings).pidfile)
    assert record is not None
    stack.agent.stop()
    wait_for(lambda: not psutil.pid_exists(record.pid), 15, what="Caddy gone with the agent")
    assert load_record(EntryFiles.of(stack.agent.settings).pidfile) is None
