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
