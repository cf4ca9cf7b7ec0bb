"""The pure parts of pairing: codes, the limit on wrong tries, sessions, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.requests import Request

from nexus_ops.agent import client_address
from nexus_ops.config import load_settings
from nexus_ops.entry.devices import DeviceSessions, device_name, safe_next
from nexus_ops.entry.pairing import ALPHABET, TryLimit, new_code, normalize_code
from nexus_ops.errors import PairingRefused
from nexus_ops.redact import redact
from nexus_ops.store import Database, Journal
from nexus_ops.store.devices import DeviceStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sessions(clock: Clock) -> DeviceSessions:
    db = Database(Path(":memory:"))
    settings = load_settings({"NEXUS_ENTRY_HOSTS": "nexus.example"})
    return DeviceSessions.of(settings, DeviceStore(db), Journal(db, clock), clock)


def test_codes_are_easy_to_type() -> None:
    codes = {new_code() for _ in range(200)}
    assert len(codes) == 200
    assert all(len(c) == 8 and set(c) <= set(ALPHABET) for c in codes)
    assert not set("01IO") & set(ALPHABET)
    assert normalize_code("k7pq xm3a") == "K7PQXM3A"
    assert normalize_code("K7PQ-XM3O") is None  # O is not in the alphabet


def test_the_limit_counts_wrong_tries_per_address_and_overall() -> None:
    limit = TryLimit(per_address=5, overall=8, window=60)
    for n in range(5):
        assert limit.retry_after("a", 100 + n) is None
        limit.failed("a", 100 + n)
    assert limit.retry_after("a", 104) == 56  # the oldest try leaves the window at 160
    assert limit.retry_after("b", 104) is None
    for n in range(3):
        limit.failed(f"c{n}", 110)
    assert limit.retry_after("d", 110) == 50  # 8 from everywhere
    assert limit.retry_after("a", 160) is None and limit.retry_after("d", 170) is None


def test_a_right_code_in_a_burst_waits_like_a_wrong_one() -> None:
    clock = Clock()
    devices = sessions(clock)
    right = devices.create_code().code
    for _ in range(5):
        with pytest.raises(PairingRefused):
            devices.pair("2222-2222", None, "192.0.2.1", "")
    with pytest.raises(PairingRefused) as refused:
        devices.pair(right, None, "192.0.2.1", "")
    assert refused.value.status == 429 and refused.value.retry_after == 60
    clock.now += 60
    device, token = devices.pair(right, None, "192.0.2.1", "")
    assert devices.check(token, "192.0.2.1") == device.model_copy(update={"last_used": None})


def test_the_last_use_is_written_once_a_minute_at_most() -> None:
    clock = Clock()
    devices = sessions(clock)
    _, token = devices.pair(devices.create_code().code, "phone", "192.0.2.1", "")
    writes: list[str] = []
    devices.store.db._conn.set_trace_callback(writes.append)
    for _ in range(50):
        clock.now += 1
        assert devices.check(token, "192.0.2.1") is not None
    updates = [sql for sql in writes if sql.startswith("UPDATE devices")]
    assert len(updates) == 1  # at 1001 s; the next one is due at 1061 s
    clock.now += 60
    devices.check(token, "192.0.2.1")
    assert len([sql for sql in writes if sql.startswith("UPDATE devices")]) == 2


def test_a_session_ends_when_it_expires() -> None:
    clock = Clock()
    devices = sessions(clock)
    _, token = devices.pair(devices.create_code().code, None, "", "")
    clock.now += 30 * 86400 - 1
    assert devices.check(token, "") is not None
    clock.now += 1
    assert devices.check(token, "") is None


def test_next_and_names_are_safe() -> None:
    assert safe_next("https://evil.example/") == "/"
    assert safe_next("/\\evil.example") == "/"
    assert safe_next("/a\r\nSet-Cookie: x") == "/"
    assert device_name(" \x00 ", None, "Mozilla/5.0 " + "x" * 100) == ("Mozilla/5.0 " + "x" * 48)
    assert device_name("", "", "") == "device"


def test_cookies_codes_and_basic_credentials_are_redacted() -> None:
    line = (
        "GET /_nexus/pair?code=K7PQ-XM3A Cookie: nexus_device=c2VjcmV0dG9rZW4; a=b "
        "Authorization: Basic b3BlbmNvZGU6cHc= code K7PQXM3A"
    )
    shown = redact(line)
    for secret in ("K7PQ-XM3A", "K7PQXM3A", "c2VjcmV0dG9rZW4", "b3BlbmNvZGU6cHc="):
        assert secret not in shown
    assert (
        "a=b" in shown and redact("HTTPSPORT 1.18.33 2026-12-04") == "HTTPSPORT 1.18.33 2026-12-04"
    )


def request_from(peer: str, forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())]
    return Request({"type": "http", "client": (peer, 50000), "headers": headers})


def test_the_forwarded_address_is_trusted_from_loopback_only() -> None:
    assert client_address(request_from("127.0.0.1", "10.9.9.9, 203.0.113.7")) == "203.0.113.7"
    assert client_address(request_from("::1", "203.0.113.7")) == "203.0.113.7"
    assert client_address(request_from("192.0.2.5", "203.0.113.7")) == "192.0.2.5"
