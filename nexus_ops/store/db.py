"""One SQLite connection in WAL mode, with schema migrations by ``user_version``."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nexus_ops.errors import StoreError


class Database:
    """A thread-safe SQLite connection (WAL, foreign keys, busy timeout).

    >>> db = Database(Path(":memory:"))
    >>> db.migrate("demo", ["CREATE TABLE t (x INTEGER)"])
    >>> db.execute("INSERT INTO t VALUES (1)").rowcount
    1
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            if str(path) != ":memory:":
                path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions "
                "(name TEXT PRIMARY KEY, version INTEGER)"
            )
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the database {path}: {exc}",
                hint="check that the folder is writable and the disk is not full; "
                "a corrupt file can be moved aside and restored from a backup",
            ) from exc
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def migrate(self, name: str, steps: Sequence[str]) -> None:
        """Apply the not yet applied ``steps`` of the schema ``name``, in order."""
        with self.transaction():
            row = self._conn.execute(
                "SELECT version FROM schema_versions WHERE name = ?", (name,)
            ).fetchone()
            current = row[0] if row else 0
            for step in steps[current:]:
                self._conn.execute(step)
            self._conn.execute(
                "INSERT OR REPLACE INTO schema_versions (name, version) VALUES (?, ?)",
                (name, len(steps)),
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _store_error(self.path, exc) from exc
                raise

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.transaction() as conn:
            conn.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc

    def size_bytes(self) -> int:
        """Bytes on disk: the database file and its WAL."""
        if str(self.path) == ":memory:":
            return 0
        return sum(p.stat().st_size for p in _db_files(self.path) if p.exists())


def _db_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal")]


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    hint = "check free disk space and permissions of the data folder"
    if "full" in text:
        hint = "the disk is full: free space (old backups, rotated logs) and try again"
    elif "malformed" in text or "not a database" in text:
        hint = f"{path} is damaged: move it aside and restore it from a backup"
    return StoreError(f"database {path}: {text}", hint=hint)
