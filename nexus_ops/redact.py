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
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def is_secret_name(name: str) -> bool:
    """True for setting or field names that hold a secret."""
    return bool(_SECRET_NAME.search(name))


def mask_setting(name: str, value: str) -> str:
    """The value to show for a setting: masked when its name says it is secret."""
    if value and is_secret_name(name):
        return MASK
    return redact(value)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Text with the given secrets, URL credentials and bearer tokens masked."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{MASK}", text)
