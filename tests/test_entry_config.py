"""The entry's Caddy configuration and certificate reading, as pure logic.

The configuration itself runs in real Caddy in tests/test_entry.py; these pin the
choices that depend on the settings.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from nexus_ops.config import load_settings
from nexus_ops.entry.config import caddy_config
from nexus_ops.entry.tls import entry_names, not_after, tls_mode


def server_of(config: dict) -> dict:  # type: ignore[type-arg]
    return config["apps"]["http"]["servers"]["entry"]


def test_tls_off_listens_on_loopback_and_serves_no_certificate() -> None:
    config = caddy_config(load_settings({"NEXUS_ENTRY_TLS": "off", "NEXUS_ENTRY_PORT": "9000"}))
    assert server_of(config)["listen"] == ["127.0.0.1:9000"]
    assert "tls_connection_policies" not in server_of(config)
    assert "tls" not in config["apps"] and "pki" not in config["apps"]


def test_default_listens_everywhere_with_the_local_ca_for_this_hosts_names() -> None:
    settings = load_settings({})
    config = caddy_config(settings)
    assert server_of(config)["listen"] == ["0.0.0.0:8443"]
    assert config["apps"]["tls"]["certificates"]["automate"] == entry_names(settings)
    assert {"localhost", "127.0.0.1"} <= set(entry_names(settings))
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False
    assert config["admin"] == {"disabled": True}


def test_entry_hosts_name_the_certificate_and_an_own_certificate_replaces_the_ca(
    tmp_path: Path,
) -> None:
    settings = load_settings({"NEXUS_ENTRY_HOSTS": "ops.lan, 10.0.0.5"})
    assert entry_names(settings) == ["ops.lan", "10.0.0.5"]
    own = load_settings(
        {"NEXUS_ENTRY_CERT": str(tmp_path / "c"), "NEXUS_ENTRY_KEY": str(tmp_path / "k")}
    )
    assert tls_mode(own) == "own"
    config = caddy_config(own)
    files = config["apps"]["tls"]["certificates"]["load_files"]
    assert files == [{"certificate": str(tmp_path / "c"), "key": str(tmp_path / "k")}]
    assert "pki" not in config["apps"]


def test_forward_auth_goes_to_the_agent_unless_told_and_copies_only_for_opencode() -> None:
    settings = load_settings({"NEXUS_AGENT_PORT": "1500", "NEXUS_OPENCODE_PORT": "4100"})
    routes = server_of(caddy_config(settings))["routes"]
    nexus, console, opencode = routes
    assert nexus["handle"][0]["upstreams"] == [{"dial": "127.0.0.1:1500"}]
    assert console["handle"][0]["upstreams"] == [{"dial": "127.0.0.1:1500"}]
    assert console["handle"][2]["upstreams"] == [{"dial": "127.0.0.1:8866"}]
    assert "Authorization" not in str(console["handle"][0]["handle_response"])
    assert "Authorization" in str(opencode["handle"][0]["handle_response"])
    assert opencode["handle"][1] == {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": "127.0.0.1:4100"}],
        "flush_interval": -1,
    }
    other = server_of(caddy_config(settings, auth="127.0.0.1:7000"))["routes"]
    assert other[2]["handle"][0]["upstreams"] == [{"dial": "127.0.0.1:7000"}]


def test_not_after_reads_utc_and_generalized_time() -> None:
    def der(tag: int, text: str) -> bytes:
        def element(t: int, content: bytes) -> bytes:
            return bytes([t, len(content)]) + content

        validity = element(0x30, element(0x17, b"260101000000Z") + element(tag, text.encode()))
        version = element(0xA0, element(0x02, b"\x02"))
        tbs = element(
            0x30,
            version + element(0x02, b"\x01") + element(0x30, b"") + element(0x30, b"") + validity,
        )
        return element(0x30, tbs + element(0x30, b"") + element(0x03, b"\x00"))

    assert not_after(der(0x17, "361130220000Z")) == dt.datetime(2036, 11, 30, 22, tzinfo=dt.UTC)
    assert not_after(der(0x18, "20510101000000Z")) == dt.datetime(2051, 1, 1, tzinfo=dt.UTC)
