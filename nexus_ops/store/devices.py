"""Pairing codes and paired devices, in the agent's database.

Only hashes of the codes and of the devices' session tokens are stored: a copy of
nexus.db (a backup) lets no one pair or log in.

>>> from pathlib import Path
>>> store = DeviceStore(Database(Path(":memory:")))
>>> store.add_code("h1", name=None, created=0.0, expires=300.0)
>>> store.use_code("h1", now=10.0)
('ok', None)
>>> store.use_code("h1", now=11.0)
('used', None)
"""

from __future__ import annotations

from typing import Any, Literal

from nexus_ops.models import Frozen
from nexus_ops.store.db import Database

SCHEMA = [
    """CREATE TABLE pairing_codes (
        hash TEXT PRIMARY KEY,
        name TEXT,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        used REAL
    )""",
    """CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        address TEXT NOT NULL DEFAULT '',
        user_agent TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        last_used REAL,
        expires REAL NOT NULL,
        revoked REAL
    )""",
]

CodeState = Literal["ok", "used", "expired", "unknown"]
# Used codes are kept a day, so that a reused one is told "used", not "unknown".
KEEP_USED_CODES = 86400.0


class Device(Frozen):
    """A paired device: its session lasts until ``expires`` unless revoked."""

    id: str
    name: str
    address: str = ""
    user_agent: str = ""
    created: float
    last_used: float | None = None
    expires: float
    revoked: float | None = None


_COLUMNS = "id, name, address, user_agent, created, last_used, expires, revoked"


class DeviceStore:
    """The tables ``pairing_codes`` and ``devices`` of nexus.db."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("devices", SCHEMA)

    # ---- pairing codes --------------------------------------------------------------

    def add_code(self, code_hash: str, name: str | None, created: float, expires: float) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "DELETE FROM pairing_codes WHERE expires < ? OR used < ?",
                (created - KEEP_USED_CODES, created - KEEP_USED_CODES),
            )
            conn.execute(
                "INSERT INTO pairing_codes (hash, name, created, expires) VALUES (?, ?, ?, ?)",
                (code_hash, name, created, expires),
            )

    def use_code(self, code_hash: str, now: float) -> tuple[CodeState, str | None]:
        """Spend the code of ``code_hash`` (once): its state before, and its name."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT name, expires, used FROM pairing_codes WHERE hash = ?", (code_hash,)
            ).fetchone()
            if row is None:
                return "unknown", None
            name, expires, used = row
            if used is not None:
                return "used", name
            if expires <= now:
                return "expired", name
            conn.execute("UPDATE pairing_codes SET used = ? WHERE hash = ?", (now, code_hash))
            return "ok", name

    # ---- devices ----------------------------------------------------------------------

    def add_device(self, device: Device, token_hash: str) -> None:
        self.db.execute(
            f"INSERT INTO devices (token_hash, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            (token_hash, *device.model_dump().values()),
        )

    def by_token(self, token_hash: str) -> Device | None:
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM devices WHERE token_hash = ?",  # noqa: S608
            (token_hash,),
        )
        return _device(rows[0]) if rows else None

    def get(self, device_id: str) -> Device | None:
        rows = self.db.query(f"SELECT {_COLUMNS} FROM devices WHERE id = ?", (device_id,))  # noqa: S608
        return _device(rows[0]) if rows else None

    def devices(self, now: float, include_ended: bool = False) -> list[Device]:
        """Devices, newest first: only live ones (not revoked, not expired) by default."""
        where = "1=1" if include_ended else "revoked IS NULL AND expires > ?"
        params = () if include_ended else (now,)
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM devices WHERE {where} ORDER BY created DESC",  # noqa: S608
            params,
        )
        return [_device(row) for row in rows]

    def touch(self, device_id: str, now: float, address: str) -> None:
        self.db.execute(
            "UPDATE devices SET last_used = ?, address = CASE WHEN ? = '' THEN address "
            "ELSE ? END WHERE id = ?",
            (now, address, address, device_id),
        )

    def revoke(self, device_id: str, now: float) -> bool:
        """Revoke one live device; False when there is none of that id."""
        cursor = self.db.execute(
            "UPDATE devices SET revoked = ? WHERE id = ? AND revoked IS NULL", (now, device_id)
        )
        return cursor.rowcount == 1

    def revoke_all(self, now: float) -> list[str]:
        """Revoke every live device; the ids revoked."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT id FROM devices WHERE revoked IS NULL AND expires > ?", (now,)
            ).fetchall()
            conn.execute("UPDATE devices SET revoked = ? WHERE revoked IS NULL", (now,))
        return [str(row[0]) for row in rows]


def _device(row: tuple[Any, ...]) -> Device:
    return Device(**dict(zip(_COLUMNS.split(", "), row, strict=True)))
