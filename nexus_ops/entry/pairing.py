"""Pairing codes: one-time, short, easy to type on a phone; stored only as hashes.

A code is 8 characters of an alphabet without look-alikes (no 0/O, no 1/I), shown
as ``XXXX-XXXX``: 40 bits, and at most :data:`PER_ADDRESS` wrong tries a minute per
address (:data:`GLOBAL` from all addresses together) before the entry answers 429.

>>> normalize_code(" k7pq-xm3a ")
'K7PQXM3A'
>>> show_code("K7PQXM3A")
'K7PQ-XM3A'
>>> normalize_code("K7PQ-XM3") is None
True
"""

from __future__ import annotations

import hashlib
import math
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from nexus_ops.config import Settings
from nexus_ops.errors import PairingRefused
from nexus_ops.models import EventKind, Frozen
from nexus_ops.store import Journal
from nexus_ops.store.devices import DeviceStore

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
CODE_LENGTH = 8
WINDOW = 60.0  # seconds over which wrong tries are counted
PER_ADDRESS = 5
GLOBAL = 30
NEW_CODE_HINT = "ask for a new code: run `nexus-ops pair` on the host (or press Pair a device)"


def new_code() -> str:
    """A fresh random code, without its dash."""
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def normalize_code(text: str) -> str | None:
    """The code typed (any case, spaces and dashes allowed), or None when it cannot be one."""
    code = "".join(text.split()).replace("-", "").upper()
    if len(code) != CODE_LENGTH or any(char not in ALPHABET for char in code):
        return None
    return code


def show_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def digest(secret: str) -> str:
    """What the database keeps of a code or a session token."""
    return hashlib.sha256(secret.encode()).hexdigest()


def entry_names(settings: Settings) -> list[str]:
    """The entry's host names: NEXUS_ENTRY_HOSTS, or this host's name."""
    names = [name.strip() for name in settings.entry_hosts.split(",") if name.strip()]
    return names or list(dict.fromkeys([socket.gethostname(), socket.getfqdn()]))


def pair_link(settings: Settings, code: str) -> str:
    """The link of a code (its QR code): the entry's first name, the pairing page."""
    host = entry_names(settings)[0]
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{settings.entry_port}/_nexus/pair?code={quote(show_code(code))}"


class PairingCode(Frozen):
    """A new code as ``POST /api/v1/pairings`` answers it (shown once, never stored)."""

    code: str
    link: str
    expires_at: float


@dataclass
class TryLimit:
    """Wrong tries in the last :data:`WINDOW` seconds, per address and from all of them."""

    per_address: int = PER_ADDRESS
    overall: int = GLOBAL
    window: float = WINDOW
    _by_address: dict[str, deque[float]] = field(default_factory=dict)
    _all: deque[float] = field(default_factory=deque)

    def retry_after(self, address: str, now: float) -> int | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        self._forget(now)
        limits = ((self._by_address.get(address), self.per_address), (self._all, self.overall))
        waits = [
            self._wait(tries, limit, now)
            for tries, limit in limits
            if tries is not None and len(tries) >= limit
        ]
        return max(waits) if waits else None

    def failed(self, address: str, now: float) -> None:
        self._by_address.setdefault(address, deque()).append(now)
        self._all.append(now)

    def _wait(self, tries: deque[float], limit: int, now: float) -> int:
        # Waiting for the oldest try that keeps the count at the limit to leave the window.
        return max(1, math.ceil(tries[len(tries) - limit] + self.window - now))

    def _forget(self, now: float) -> None:
        for tries in (self._all, *self._by_address.values()):
            while tries and tries[0] <= now - self.window:
                tries.popleft()
        for address in [a for a, tries in self._by_address.items() if not tries]:
            del self._by_address[address]


REFUSALS = {
    "unknown": "this pairing code is not right (check it, or ask for a new one)",
    "used": "this pairing code was used already: a code works once",
    "expired": "this pairing code has expired",
    "malformed": "a pairing code is 8 letters and digits, like K7PQ-XM3A",
}


class PairingCodes:
    """Make codes and spend them, with the limit on wrong tries, journaling each refusal."""

    def __init__(
        self,
        settings: Settings,
        store: DeviceStore,
        journal: Journal,
        clock: Callable[[], float] = time.time,
        limit: TryLimit | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.journal = journal
        self.clock = clock
        self.limit = limit or TryLimit()
        self._lock = threading.Lock()  # a check and its count are one step
        self._limited: dict[str, float] = {}  # address -> when its limit was journaled

    def create(self, name: str | None = None) -> PairingCode:
        code, now = new_code(), self.clock()
        expires = now + self.settings.pairing_ttl
        self.store.add_code(digest(code), name, now, expires)
        self.journal.record(
            EventKind.PAIRING_CREATED,
            message=f"pairing code made (valid {self.settings.pairing_ttl} s)",
            details={"name": name, "expires": expires},
        )
        return PairingCode(
            code=show_code(code), link=pair_link(self.settings, code), expires_at=expires
        )

    def spend(self, typed: str, address: str) -> str | None:
        """Spend a code; the device name given when it was made. Refused: PairingRefused."""
        with self._lock:
            now = self.clock()
            wait = self.limit.retry_after(address, now)
            if wait is not None:
                self._journal_limited(address, now, wait)
                raise PairingRefused(
                    f"too many wrong pairing codes: try again in {wait} s",
                    hint="check the code on the host's screen; " + NEW_CODE_HINT,
                    status=429,
                    retry_after=wait,
                )
            code = normalize_code(typed)
            state, name = (
                ("malformed", None) if code is None else self.store.use_code(digest(code), now)
            )
            if state == "ok":
                return name
            self.limit.failed(address, now)
        self.journal.record(
            EventKind.PAIRING_FAILED,
            reason=state,
            message=f"pairing refused from {address or 'an unknown address'}: {REFUSALS[state]}",
            details={"address": address},
        )
        raise PairingRefused(REFUSALS[state], hint=NEW_CODE_HINT)

    def _journal_limited(self, address: str, now: float, wait: int) -> None:
        """Once per address and window: a burst of tries is one entry, not hundreds."""
        if now - self._limited.get(address, -math.inf) < self.limit.window:
            return
        self._limited = {a: t for a, t in self._limited.items() if now - t < self.limit.window}
        self._limited[address] = now
        self.journal.record(
            EventKind.PAIRING_RATE_LIMITED,
            message=f"pairing from {address or 'an unknown address'} refused for {wait} s: "
            "too many wrong codes",
            details={"address": address, "retry_after": wait},
        )
