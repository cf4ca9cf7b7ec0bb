"""The entry's Caddy configuration, in Caddy's native JSON.

Routes, on ``https://HOST:NEXUS_ENTRY_PORT``:

- ``/_nexus/*``: the agent's pairing pages, without ``forward_auth``;
- ``/console/*``: the Voila console, behind ``forward_auth`` to the agent's
  ``/entry/check`` (no header copied);
- everything else: the OpenCode server, behind ``forward_auth`` that copies the
  ``Authorization`` header of the agent's answer onto the upstream request (the
  client's own ``Authorization`` is deleted first, so it never reaches OpenCode).

Event streams pass at once (``flush_interval: -1``); websockets pass as Caddy's
reverse proxy always lets them. The admin API is off: the agent restarts Caddy
with a new file instead of talking to it.

>>> from nexus_ops.config import load_settings
>>> routes = caddy_config(load_settings({}))["apps"]["http"]["servers"]["entry"]["routes"]
>>> [r["match"][0]["path"] for r in routes[:2]]
[['/_nexus/*'], ['/console/*']]
"""

from __future__ import annotations

from typing import Any

from nexus_ops.config import Settings
from nexus_ops.entry.tls import CA_NAME, entry_bind, entry_names, tls_mode

CHECK_PATH = "/entry/check"
CA_DISPLAY_NAME = "nexus-ops local CA"
JSON = dict[str, Any]


def loopback_dial(host: str, port: int) -> str:
    """``host:port`` of an upstream on this host (a wildcard address dialled on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def caddy_config(settings: Settings, auth: str | None = None) -> JSON:
    """Caddy's configuration for these settings; ``auth`` is the ``host:port`` that answers
    ``forward_auth`` (default: the agent)."""
    agent = loopback_dial(settings.agent_host, settings.agent_port)
    console = loopback_dial(settings.console_host, settings.console_port)
    opencode = loopback_dial(settings.opencode_host, settings.opencode_port)
    auth = auth or agent
    routes = [
        _route("/_nexus/*", [_proxy(agent, host=True)]),
        _route(
            "/console/*",
            [_forward_auth(auth, copy=False), _same_origin(console), _proxy(console, host=True)],
        ),
        {"handle": [_forward_auth(auth, copy=True), _proxy(opencode, stream=True)]},
    ]
    server: JSON = {
        "listen": [loopback_listen(entry_bind(settings), settings.entry_port)],
        "routes": routes,
        "automatic_https": {"disable": True},
        "protocols": ["h1", "h2"],  # TCP only: no HTTP/3 port (UDP) to open in a firewall
    }
    # A stream left open (a web UI's events) must not hold Caddy's exit for long.
    apps: JSON = {"http": {"servers": {"entry": server}, "grace_period": "2s"}}
    mode = tls_mode(settings)
    if mode != "off":
        server["tls_connection_policies"] = [{}]
        apps["tls"] = _tls_app(settings, mode)
    if mode == "internal":
        apps["pki"] = {
            "certificate_authorities": {
                CA_NAME: {"name": CA_DISPLAY_NAME, "install_trust": False},
            }
        }
    return {"admin": {"disabled": True}, "logging": _logging(), "apps": apps}


def loopback_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_app(settings: Settings, mode: str) -> JSON:
    if mode == "own":
        files = {"certificate": str(settings.entry_cert), "key": str(settings.entry_key)}
        return {"certificates": {"load_files": [files]}}
    names = entry_names(settings)
    return {
        "certificates": {"automate": names},
        "automation": {
            "policies": [{"subjects": names, "issuers": [{"module": "internal", "ca": CA_NAME}]}]
        },
    }


def _logging() -> JSON:
    # One line per event on stderr, which the agent appends to logs/entry.log.
    return {"logs": {"default": {"writer": {"output": "stderr"}, "level": "INFO"}}}


def _route(path: str, handle: list[JSON]) -> JSON:
    return {"match": [{"path": [path]}], "handle": handle, "terminal": True}


def _proxy(dial: str, host: bool = False, stream: bool = False) -> JSON:
    """A reverse proxy to ``dial``; ``host``: the upstream sees its own Host (the agent and
    the console accept only their own names; X-Forwarded-Host keeps the client's)."""
    proxy: JSON = {"handler": "reverse_proxy", "upstreams": [{"dial": dial}]}
    if host:
        proxy["headers"] = {
            "request": {"set": {"Host": ["{http.reverse_proxy.upstream.hostport}"]}}
        }
    if stream:
        proxy["flush_interval"] = -1
    return proxy


def _same_origin(dial: str) -> JSON:
    """A page of the entry's own origin is, to the console, of the console's origin.

    The console sees its own Host (see :func:`_proxy`); Jupyter refuses a kernel's
    websocket whose Origin is not that Host. Only the entry's own origin is rewritten:
    a page of another site keeps its Origin, and is refused.
    """
    own = ["https://{http.request.hostport}", "http://{http.request.hostport}"]
    rewrite = {"handler": "headers", "request": {"set": {"Origin": [f"http://{dial}"]}}}
    return {
        "handler": "subroute",
        "routes": [{"match": [{"header": {"Origin": own}}], "handle": [rewrite]}],
    }


def _forward_auth(dial: str, copy: bool) -> JSON:
    """What Caddy's ``forward_auth`` directive expands to: a GET of ``/entry/check`` with
    the client's headers; a 2xx lets the request on, any other answer goes to the client."""
    passed: list[JSON] = [{"handle": [{"handler": "vars"}]}]
    if copy:
        passed += [
            {"handle": [{"handler": "headers", "request": {"delete": ["Authorization"]}}]},
            {
                "match": [{"not": [{"vars": {"{http.reverse_proxy.header.Authorization}": [""]}}]}],
                "handle": [
                    {
                        "handler": "headers",
                        "request": {
                            "set": {"Authorization": ["{http.reverse_proxy.header.Authorization}"]}
                        },
                    }
                ],
            },
        ]
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": dial}],
        "rewrite": {"method": "GET", "uri": CHECK_PATH + "?"},  # "?": the query not kept
        "headers": {
            "request": {
                "set": {
                    "Host": ["{http.reverse_proxy.upstream.hostport}"],
                    "X-Forwarded-Method": ["{http.request.method}"],
                    "X-Forwarded-Uri": ["{http.request.uri}"],
                },
                # The check of a websocket is a plain GET, never an upgrade itself.
                "delete": ["Connection", "Upgrade", "Sec-WebSocket-Key"],
            }
        },
        "handle_response": [{"match": {"status_code": [2]}, "routes": passed}],
    }
