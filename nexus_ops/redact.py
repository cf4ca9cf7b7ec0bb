"""Keep secrets out of everything a person or a log sees.

>>> mask_setting("webhook_token", "abc123")
'********'
>>> redact("curl -u opencode:hunter2 http://h", secrets=["hunter2"])
'curl -u opencode:******** http://h'
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "********"
_SECRET_NAME = re.compile(r"(password|passwd|token|secret|credential|api_?key)", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):[^@/\s]+@")
_BEARER = re.compile(r"(?i)((?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+")
# A device's session cookie, and a pairing code (8 of its alphabet, shown as XXXX-XXXX).
_DEVICE_COOKIE = re.compile(r"(nexus_device=)[^;\s&]+")
_PAIRING_CODE = re.compile(r"\b[2-9A-HJ-NP-Z]{4}-?[2-9A-HJ-NP-Z]{4}\b")
_PAIRING_QUERY = re.compile(r"(?i)([?&]code=)[^&#\s]+")
# Query parameters whose name says they carry a secret (?token=..., &api_key=...).
_QUERY_SECRET = re.compile(
    r"(?i)([?&][a-z0-9_.-]*(?:token|secret|password|passwd|key|sig|signature|auth)[a-z0-9_.-]*=)"
    r"[^&#\s]+"
)
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s,]+", re.IGNORECASE)
# A path segment that looks like a generated credential (hooks.slack.com/services/T0/B0/XyZ...).
_TOKEN_SEGMENT = re.compile(r"^(?:(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_-]{16,}|[A-Za-z0-9_-]{24,})$")


def is_secret_name(name: str) -> bool:
    """True for setting or field names that hold a secret."""
    return bool(_SECRET_NAME.search(name))


def mask_setting(name: str, value: str) -> str:
    """The value to show for a setting: masked when its name says it is secret.

    Webhook URLs often carry their credential in the path, so every URL of a
    ``*webhook*`` setting is shown through :func:`mask_url`.
    """
    if value and is_secret_name(name):
        return MASK
    if "webhook" in name.lower():
        return _URL.sub(lambda m: mask_url(m.group(0)), value)
    return redact(value)


def mask_url(url: str) -> str:
    """A URL safe to show: password, secret query values and token-like path parts masked.

    >>> mask_url("https://u:pw@hooks.example/services/T0/B0/abcdefgh12345678?token=x&a=1")
    'https://u:********@hooks.example/services/T0/B0/********?token=********&a=1'
    """
    text = redact(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    authority, slash, path = rest.partition("/")
    path, hash_, fragment = path.partition("#")
    path, qmark, query = path.partition("?")
    segments = [MASK if _TOKEN_SEGMENT.match(seg) else seg for seg in path.split("/")]
    shown = f"{scheme}://{authority}{slash}{'/'.join(segments)}"
    return shown + (qmark + query if qmark else "") + (hash_ + MASK if hash_ and fragment else "")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Text with the given secrets, URL credentials, bearer and basic credentials, device
    cookies and pairing codes masked.

    >>> redact("GET /_nexus/pair?code=K7PQ-XM3A Cookie: nexus_device=abc; theme=dark")
    'GET /_nexus/pair?code=******** Cookie: nexus_device=********; theme=dark'
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = _PAIRING_QUERY.sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = _DEVICE_COOKIE.sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = _PAIRING_CODE.sub(lambda m: _masked_code(m.group(0)), text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{MASK}", text)


def _masked_code(found: str) -> str:
    """A pairing code masked; a word of capitals alone (``HTTPSPORT``) is left as it is."""
    return MASK if "-" in found or any(char.isdigit() for char in found) else found
