"""Addresses and tokens: what counts as local, and what counts as a strong secret.

>>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("localhost")
(True, False, True)
>>> token_problem("hunter2")
'is 7 characters long; use at least 32 random characters'
"""

from __future__ import annotations

import ipaddress

from nexus_ops.errors import SecurityError

MIN_TOKEN_LENGTH = 32
MIN_DISTINCT = 12


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and every loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_problem(token: str) -> str | None:
    """What makes a token or password weak, or None when it is strong enough."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"is {len(token)} characters long; use at least {MIN_TOKEN_LENGTH} random characters"
    if len(set(token)) < MIN_DISTINCT:
        return f"uses only {len(set(token))} distinct characters; use a random one"
    return None


def require_strong_token(token: str, what: str) -> None:
    """Raise SecurityError when ``token`` is weak (used before serving a remote address)."""
    problem = token_problem(token)
    if problem is not None:
        raise SecurityError(
            f"{what} {problem}",
            hint="delete the file so that a strong token is generated, or write one made with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
        )


# ---- the Host header (against DNS rebinding) -------------------------------------------

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 - the addresses, not a bind


def host_of(header: str) -> str:
    """The name in a ``Host`` header, without port or IPv6 brackets, lower case.

    >>> host_of("[::1]:8866"), host_of("LocalHost:1420"), host_of("evil.example")
    ('::1', 'localhost', 'evil.example')
    """
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    name, _, port = value.rpartition(":")
    return name if name and port.isdigit() and ":" not in name else value


def allowed_hosts(bind: str, names: list[str]) -> frozenset[str]:
    """The ``Host`` names a server bound to ``bind`` answers: loopback, the bind, ``names``."""
    return frozenset({*LOOPBACK_NAMES, host_of(bind), *(host_of(name) for name in names if name)})


def host_allowed(header: str | None, bind: str, allowed: frozenset[str]) -> bool:
    """True for a known name, a loopback address, or any address when bound to every one.

    A rebinding page reaches a server under its own domain name, never an IP literal,
    so a wildcard bind (which answers on every address of the machine) accepts them.

    >>> ok = allowed_hosts("127.0.0.1", ["console.lan"])
    >>> [host_allowed(h, "127.0.0.1", ok) for h in ("console.lan:8866", "evil.example", None)]
    [True, False, False]
    """
    if not header:
        return False
    host = host_of(header)
    if host in allowed or is_loopback(host):
        return True
    return bind in WILDCARDS and _is_address(host)


def refused_host_message(header: str | None) -> str:
    """What a refused request is told (with :data:`HOST_HINT`)."""
    return f"Host {header!r} is not a name of this server (refused: a DNS-rebinding guard)"


HOST_HINT = (
    "use 127.0.0.1 or localhost, or add the name to NEXUS_ALLOWED_HOSTS "
    "(comma-separated) and restart"
)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
