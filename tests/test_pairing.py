"""Pairing a device and its session, against the real agent and the real OpenCode server.

The requests are the entry's (Caddy's): plain HTTP on loopback, with the headers it
sends (Host of the entry, X-Forwarded-For, X-Forwarded-Uri, the device's Cookie).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from conftest import RunningAgent, nexus_cli, start_agent

from nexus_ops.entry.pairing import GLOBAL, PER_ADDRESS
from nexus_ops.ui.base import PanelContext
from nexus_ops.ui.devices import DevicesPanel

pytestmark = pytest.mark.opencode

ENTRY_HOST = "nexus.example"
PHONE = "203.0.113.7"


@pytest.fixture
def entry_agent(nexus_env: dict[str, str]) -> Iterator[RunningAgent]:
    nexus_env.update(NEXUS_ENTRY_HOSTS=f"{ENTRY_HOST},10.0.0.5", NEXUS_PAIRING_TTL="5")
    running = start_agent(nexus_env)
    yield running
    running.client.close()
    running.stop()


def entry(agent: RunningAgent, address: str = PHONE) -> httpx.Client:
    """The agent as the entry reaches it: its devices' Host, their address forwarded."""
    headers = {
        "Host": f"{ENTRY_HOST}:8443",
        "X-Forwarded-For": address,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": f"{ENTRY_HOST}:8443",
        "User-Agent": "Mozilla/5.0 (iPhone) Mobile Safari",
    }
    return httpx.Client(base_url=agent.client.base_url, headers=headers, timeout=10)


def submit(client: httpx.Client, code: str, name: str = "", next_path: str = "/") -> httpx.Response:
    form = {"code": code, "name": name, "next": next_path}
    return client.post("/_nexus/pair", data=form, follow_redirects=False)


def check(client: httpx.Client, cookie: str | None, accept: str = "*/*") -> httpx.Response:
    headers = {
        "Accept": accept,
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Uri": "/session?directory=/srv/app",
    }
    if cookie:
        headers["Cookie"] = f"nexus_device={cookie}"
    return client.get("/entry/check", headers=headers)


def cookie_of(response: httpx.Response) -> str:
    found = re.match(r"nexus_device=([^;]+);", response.headers["set-cookie"])
    assert found, response.headers["set-cookie"]
    return found.group(1)


def kinds(agent: RunningAgent, *names: str) -> list[str]:
    return [event.kind for event in agent.client.events(kinds=list(names), limit=1000)]


def test_pairing_gives_a_session_whose_check_opens_the_server(entry_agent: RunningAgent) -> None:
    agent = entry_agent
    assert agent.client.start().ok
    made = agent.client.create_pairing()
    assert re.fullmatch(r"[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}", made.code)
    assert made.link == f"https://{ENTRY_HOST}:8443/_nexus/pair?code={made.code}"
    assert 0 < made.expires_at - time.time() <= 5
    with entry(agent) as phone:
        form = phone.get("/_nexus/pair", params={"code": made.code})
        assert form.status_code == 200 and f"value='{made.code}'" in form.text
        done = submit(phone, made.code.lower(), next_path="/session")
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/session"
        token = cookie_of(done)
        assert len(token) >= 43  # 32 random bytes
        checked = check(phone, token)
        assert checked.status_code == 200, checked.text
        device = checked.headers["x-nexus-device"]
        auth = checked.headers["authorization"]
        # The entry copies this header upstream: the real server takes it.
        health = f"http://127.0.0.1:{agent.settings.opencode_port}/global/health"
        assert httpx.get(health, headers={"Authorization": auth}, timeout=5).status_code == 200
        assert httpx.get(health, timeout=5).status_code == 401
        # Nothing the browser sees holds the password or the token.
        password = (agent.settings.home / "secrets" / "opencode.password").read_text().strip()
        agent_token = (agent.settings.home / "secrets" / "agent.token").read_text().strip()
        for shown in (form, done):
            seen = shown.text + str(dict(shown.headers))
            assert password not in seen and agent_token not in seen and "Basic" not in seen
    listed = agent.client.devices()
    assert [(d.id, d.address) for d in listed] == [(device, PHONE)]
    assert "iPhone" in listed[0].name
    days = (listed[0].expires - listed[0].created) / 86400
    assert days == pytest.approx(30)
    assert kinds(agent, "device_paired") == ["device_paired"]


def test_the_cookie_and_the_page_keep_to_the_contract(entry_agent: RunningAgent) -> None:
    agent = entry_agent
    with entry(agent) as phone:
        page = phone.get("/_nexus/pair")
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert "script-src" not in policy and "<script" not in page.text
        done = submit(phone, agent.client.create_pairing(name="tablet").code, name="")
        attributes = [part.strip() for part in done.headers["set-cookie"].split(";")]
        assert attributes[1:] == [
            "HttpOnly", "Secure", "SameSite=Strict", "Path=/", f"Max-Age={30 * 86400}"
        ]  # fmt: skip
        assert done.headers["location"] == "/"
    assert [d.name for d in agent.client.devices()] == ["tablet"]  # the code's name


def test_a_used_or_expired_code_is_refused_with_what_to_do(entry_agent: RunningAgent) -> None:
    agent = entry_agent
    with entry(agent) as phone:
        code = agent.client.create_pairing().code
        assert submit(phone, code).status_code == 303
        again = submit(phone, code)
        assert again.status_code == 400 and "set-cookie" not in again.headers
        assert "used already" in again.text and "nexus-ops pair" in again.text
        late = agent.client.create_pairing().code
        time.sleep(5.2)  # NEXUS_PAIRING_TTL=5
        expired = submit(phone, late)
        assert expired.status_code == 400 and "expired" in expired.text
        assert "nexus-ops pair" in expired.text and "set-cookie" not in expired.headers
        assert expired.headers["x-frame-options"] == "DENY"
    failed = agent.client.events(kinds=["pairing_failed"])
    assert [event.reason for event in failed] == ["used", "expired"]
    journal = json.dumps([event.model_dump() for event in agent.client.events(limit=1000)])
    assert code not in journal and code.replace("-", "") not in journal


def test_a_revoked_device_is_refused_at_once(entry_agent: RunningAgent) -> None:
    agent = entry_agent
    with entry(agent) as phone, entry(agent, "198.51.100.4") as laptop:
        phone_cookie = cookie_of(submit(phone, agent.client.create_pairing().code))
        laptop_cookie = cookie_of(submit(laptop, agent.client.create_pairing().code))
        assert check(phone, phone_cookie).status_code == 200
        device = check(phone, phone_cookie).headers["x-nexus-device"]
        done = nexus_cli(agent.env, "devices", "revoke", device)
        assert done.returncode == 0 and f"revoked {device}" in done.stdout, done.stderr
        refused = check(phone, phone_cookie)
        assert refused.status_code == 401 and "authorization" not in refused.headers
        assert "pair" in refused.json()["hint"]
        page = check(phone, phone_cookie, accept="text/html,application/xhtml+xml")
        assert page.status_code == 302
        location = page.headers["location"]
        assert urlsplit(location).path == "/_nexus/pair"
        assert unquote(location.split("next=", 1)[1]) == "/session?directory=/srv/app"
        assert check(laptop, laptop_cookie).status_code == 200  # the other device keeps its own
        assert check(laptop, None).status_code == 401
        assert check(laptop, "forged" * 8).status_code == 401
        gone = nexus_cli(agent.env, "devices", "revoke", device)
        assert gone.returncode == 1 and "nexus-ops devices" in gone.stderr
        logout = laptop.post("/_nexus/logout", headers={"Cookie": f"nexus_device={laptop_cookie}"})
        assert logout.status_code == 200 and "Max-Age=0" in logout.headers["set-cookie"]
        assert check(laptop, laptop_cookie).status_code == 401
    assert agent.client.devices() == []
    assert [e.reason for e in agent.client.events(kinds=["device_revoked"])] == [
        "operator", "logout"
    ]  # fmt: skip


def test_a_burst_of_wrong_codes_gets_429_even_for_the_right_one(entry_agent: RunningAgent) -> None:
    agent = entry_agent
    right = agent.client.create_pairing().code
    wrong = "2222-2222" if right != "2222-2222" else "3333-3333"
    with entry(agent, "192.0.2.66") as attacker, entry(agent) as phone:
        answers = [submit(attacker, wrong).status_code for _ in range(PER_ADDRESS)]
        assert answers == [400] * PER_ADDRESS
        limited = submit(attacker, right)  # the right code, but after the burst
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "too many" in limited.text and "set-cookie" not in limited.headers
        for _ in range(20):  # more of the burst: still refused, journaled once
            assert submit(attacker, wrong).status_code == 429
        # Another address is not held up by this one...
        assert submit(phone, right).status_code == 303
        # ...until wrong codes from everywhere reach the global limit.
        for n in range(GLOBAL - PER_ADDRESS):
            with entry(agent, f"192.0.2.{n + 1}") as other:
                assert submit(other, wrong).status_code == 400
        fresh = agent.client.create_pairing().code
        assert submit(phone, fresh).status_code == 429
    assert kinds(agent, "pairing_failed") == ["pairing_failed"] * GLOBAL
    limited_events = agent.client.events(kinds=["pairing_rate_limited"])
    assert [e.details["address"] for e in limited_events] == ["192.0.2.66", PHONE]


def test_the_entry_host_reaches_only_the_entry_paths(entry_agent: RunningAgent) -> None:
    agent = entry_agent
    with entry(agent) as phone:
        assert phone.get("/_nexus/pair").status_code == 200
        assert phone.get("/entry/check").status_code == 401
        token = (agent.settings.home / "secrets" / "agent.token").read_text().strip()
        api = phone.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"})
        assert api.status_code == 403  # the API keeps answering its own names only
    rebound = httpx.get(
        f"{agent.client.base_url}/_nexus/pair", headers={"Host": "evil.example"}, timeout=5
    )
    assert rebound.status_code == 403


def test_pair_and_devices_commands(entry_agent: RunningAgent) -> None:
    agent = entry_agent
    done = nexus_cli(agent.env, "pair", "--name", "kitchen tablet")
    assert done.returncode == 0, done.stderr
    code = re.search(r"code:\s+(\S+)", done.stdout)
    assert code and f"https://{ENTRY_HOST}:8443/_nexus/pair?code={code.group(1)}" in done.stdout
    assert "expires:" in done.stdout and "█" in done.stdout  # the QR code
    with entry(agent) as phone:
        assert submit(phone, code.group(1)).status_code == 303
    listed = nexus_cli(agent.env, "devices")
    assert "kitchen tablet" in listed.stdout and PHONE in listed.stdout
    rows = json.loads(nexus_cli(agent.env, "devices", "--json").stdout)
    assert [row["name"] for row in rows] == ["kitchen tablet"]
    made = json.loads(nexus_cli(agent.env, "pair", "--json").stdout)
    assert set(made) == {"code", "link", "expires_at"}
    posture = json.loads(nexus_cli(agent.env, "security", "check", "--json").stdout)
    row = next(item for item in posture["items"] if item["name"] == "paired devices")
    assert row["status"] == "pass" and row["details"]["devices"] == 1
    assert "kitchen tablet" in row["summary"] and PHONE in row["summary"]
    assert "paired devices: 1 paired device(s)" in nexus_cli(agent.env, "security", "check").stdout
    ended = nexus_cli(agent.env, "devices", "revoke", "--all")
    assert ended.returncode == 0 and f"revoked 1 device(s): {rows[0]['id']}" in ended.stdout
    assert "no paired devices" in nexus_cli(agent.env, "devices").stdout
    neither = nexus_cli(agent.env, "devices", "revoke")
    assert neither.returncode == 2 and "--all" in neither.stderr


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("NEXUS_PAIRING_TTL", "abc", "a whole number"),
        ("NEXUS_PAIRING_TTL", "1", "NEXUS_PAIRING_TTL"),
        ("NEXUS_DEVICE_SESSION_DAYS", "0", "NEXUS_DEVICE_SESSION_DAYS"),
        ("NEXUS_ENTRY_PORT", "70000", "NEXUS_ENTRY_PORT"),
    ],
)
def test_bad_settings_are_named(
    nexus_env: dict[str, str], variable: str, value: str, said: str
) -> None:
    done = nexus_cli({**nexus_env, variable: value}, "config", "check")
    assert done.returncode == 2
    assert variable in done.stderr + done.stdout and said in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_the_devices_tab_pairs_lists_and_revokes(entry_agent: RunningAgent) -> None:
    agent = entry_agent
    panel = DevicesPanel(PanelContext(client=agent.client, run=lambda work: work()))
    assert panel.refresh() and "No paired devices" in panel.table.value
    assert panel.revoke_button.disabled
    panel.pair_button.click()
    code = re.search(r"class='nx-pair-code'[^>]*>([^<]+)<", panel.pairing.value)
    assert code and "<svg" in panel.pairing.value
    with entry(agent) as phone:
        cookie = cookie_of(submit(phone, code.group(1), name="desk laptop"))
        assert panel.refresh() and "desk laptop" in panel.table.value
        assert PHONE in panel.table.value and not panel.revoke_button.disabled
        panel.revoke_button.click()
        assert "Revoked desk laptop" in panel.banner.widget.value
        assert check(phone, cookie).status_code == 401
    assert "No paired devices" in panel.table.value
