"""The journal: every start, stop, exit, restart, adoption and fatal, with its time.

Also a small key-value table for state that must outlive the agent (the desired
state of the server, its restart count).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from nexus_ops.models import Event
from nexus_ops.redact import redact
from nexus_ops.store.db import Database

SCHEMA = [
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        kind TEXT NOT NULL,
        reason TEXT,
        message TEXT NOT NULL DEFAULT '',
        pid INTEGER,
        details TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX events_time ON events (time)",
    "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]


class Journal:
    """Append-only events and durable key-value state.

    >>> from pathlib import Path
    >>> journal = Journal(Database(Path(":memory:")))
    >>> journal.record("start", message="pid 42", pid=42).kind
    'start'
    """

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock
        db.migrate("journal", SCHEMA)

    def record(
        self,
        kind: str,
        *,
        reason: str | None = None,
        message: str = "",
        pid: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> Event:
        now = self._clock()
        message = redact(message)  # a session cookie or pairing code never stays in it
        payload = json.dumps(details or {}, sort_keys=True)
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO events (time, kind, reason, message, pid, details) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (now, kind, reason, message, pid, payload),
            )
        event_id = cursor.lastrowid or 0
        return Event(
            id=event_id,
            time=now,
            kind=kind,
            reason=reason,
            message=message,
            pid=pid,
            details=details or {},
        )

    def events(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        kinds: Sequence[str] = (),
        limit: int = 200,
        after_id: int | None = None,
    ) -> list[Event]:
        """Events, newest last, filtered by time, kind and id."""
        clauses: list[str] = ["1=1"]
        params: list[Any] = []
        if since is not None:
            clauses.append("time >= ?")
            params.append(since)
        if until is not None:
            clauses.append("time <= ?")
            params.append(until)
        if after_id is not None:
            clauses.append("id > ?")
            params.append(after_id)
        if kinds:
            clauses.append(f"kind IN ({','.join('?' * len(kinds))})")
            params.extend(kinds)
        # Only fixed clause texts are joined; every value is a bound parameter.
        sql = (
            "SELECT id, time, kind, reason, message, pid, details FROM events WHERE "  # noqa: S608
            + " AND ".join(clauses)
            + " ORDER BY id DESC LIMIT ?"
        )
        rows = self.db.query(sql, [*params, limit])
        return [_event(row) for row in reversed(rows)]

    def count(self, kind: str, since: float | None = None) -> int:
        sql = "SELECT COUNT(*) FROM events WHERE kind = ? AND time >= ?"
        return int(self.db.query(sql, (kind, since or 0.0))[0][0])

    def get(self, key: str, default: str | None = None) -> str | None:
        rows = self.db.query("SELECT value FROM state WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else default

    def put(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))


def _event(row: tuple[Any, ...]) -> Event:
    event_id, when, kind, reason, message, pid, details = row
    return Event(
        id=event_id,
        time=when,
        kind=kind,
        reason=reason,
        message=message,
        pid=pid,
        details=json.loads(details),
    )
