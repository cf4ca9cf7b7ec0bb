"""Device sessions: what a paired phone or laptop holds (a cookie), and how it is checked.

The cookie ``nexus_device`` holds 32 random bytes; the database keeps only their
hash, the device's name and address, when it paired, last used the entry, and when
its session ends (NEXUS_DEVICE_SESSION_DAYS). A revoked device's next request through
the entry is refused.

>>> session_cookie("tok", 60)
'nexus_device=tok; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=60'
>>> safe_next("//evil.example/x"), safe_next("/session?x=1")
('/', '/session?x=1')
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

from nexus_ops.config import Settings
from nexus_ops.entry.pairing import PairingCode, PairingCodes, digest
from nexus_ops.errors import DeviceNotFound
from nexus_ops.models import EventKind
from nexus_ops.store import Journal
from nexus_ops.store.devices import Device, DeviceStore

COOKIE = "nexus_device"
TOUCH_EVERY = 60.0  # seconds: the last use is written at most this often per device
NAME_LENGTH = 60
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def session_cookie(token: str, max_age: int) -> str:
    """The ``Set-Cookie`` value of a device session (``max_age`` 0 ends it)."""
    return f"{COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age}"


def safe_next(target: str | None) -> str:
    """Where to go after pairing: a path of the entry itself, never another site."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if len(target) > 2000 or _UNPRINTABLE.search(target):
        return "/"
    return target


def device_name(given: str | None, from_code: str | None, user_agent: str) -> str:
    """The name typed on the form, else the one given with the code, else the browser's."""
    for candidate in (given, from_code, user_agent):
        name = " ".join(_UNPRINTABLE.sub(" ", candidate or "").split())[:NAME_LENGTH]
        if name:
            return name
    return "device"


class DeviceSessions:
    """Pair devices with codes; check, list and revoke their sessions."""

    def __init__(self, codes: PairingCodes) -> None:
        self.codes = codes
        self.settings, self.store, self.journal = codes.settings, codes.store, codes.journal
        self.clock = codes.clock

    @classmethod
    def of(
        cls,
        settings: Settings,
        store: DeviceStore,
        journal: Journal,
        clock: Callable[[], float] = time.time,
    ) -> DeviceSessions:
        """Sessions, and their codes, in ``store``: ``DeviceSessions.of(settings, store, journal)``."""
        return cls(PairingCodes(settings, store, journal, clock))

    @property
    def max_age(self) -> int:
        return self.settings.device_session_days * 86400

    def create_code(self, name: str | None = None) -> PairingCode:
        return self.codes.create(name)

    def pair(
        self, code: str, name: str | None, address: str, user_agent: str
    ) -> tuple[Device, str]:
        """Spend ``code`` and make a device: the device and its session token (the cookie's)."""
        from_code = self.codes.spend(code, address)
        now, token = self.clock(), secrets.token_urlsafe(32)
        device = Device(
            id=secrets.token_hex(6),
            name=device_name(name, from_code, user_agent),
            address=address,
            user_agent=user_agent[:300],
            created=now,
            expires=now + self.max_age,
        )
        self.store.add_device(device, digest(token))
        self.journal.record(
            EventKind.DEVICE_PAIRED,
            message=f"device {device.id} ({device.name}) paired from {address or 'unknown'}",
            details={"device": device.id, "name": device.name, "address": address},
        )
        return device, token

    def check(self, token: str | None, address: str) -> Device | None:
        """The live device of a session token, its last use noted (once a minute at most)."""
        if not token:
            return None
        device = self.store.by_token(digest(token))
        now = self.clock()
        if device is None or device.revoked is not None or device.expires <= now:
            return None
        if device.last_used is None or now - device.last_used >= TOUCH_EVERY:
            self.store.touch(device.id, now, address)
        return device

    def devices(self) -> list[Device]:
        return self.store.devices(self.clock())

    def revoke(self, device_id: str, by: str = "operator") -> Device:
        device = self.store.get(device_id)
        if device is None or not self.store.revoke(device_id, self.clock()):
            raise DeviceNotFound(
                f"no paired device {device_id!r} (or it was revoked already)",
                hint="list the devices with `nexus-ops devices`",
            )
        self._revoked([device.id], by)
        return device

    def revoke_all(self, by: str = "operator") -> list[str]:
        ids = self.store.revoke_all(self.clock())
        if ids:
            self._revoked(ids, by)
        return ids

    def logout(self, token: str | None) -> None:
        """End the session of ``token`` (a device logging itself out)."""
        device = self.store.by_token(digest(token)) if token else None
        if device is not None and self.store.revoke(device.id, self.clock()):
            self._revoked([device.id], "logout")

    def _revoked(self, ids: list[str], by: str) -> None:
        self.journal.record(
            EventKind.DEVICE_REVOKED,
            reason=by,
            message=f"device session ended ({by}): {', '.join(ids)}",
            details={"devices": ids},
        )
