"""One SQLite connection in WAL mode, with schema migrations by ``user_version``.

The agent owns its databases and keeps them whole: opened with
``set_aside_damaged``, a file that is not a database or fails ``PRAGMA
quick_check`` is moved aside (``nexus.db.corrupt-<time>``) and a fresh one made;
:meth:`Database.check_identity` notices a file deleted or replaced under the open
connection and rebuilds it at its path from what the connection still holds.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nexus_ops.errors import StoreError

NOTHING_KEPT = "its records could not be read back: a fresh, empty one was created"


class Database:
    """A thread-safe SQLite connection (WAL, foreign keys, busy timeout).

    >>> db = Database(Path(":memory:"))
    >>> db.migrate("demo", ["CREATE TABLE t (x INTEGER)"])
    >>> db.execute("INSERT INTO t VALUES (1)").rowcount
    1
    """

    def __init__(self, path: Path, *, set_aside_damaged: bool = False) -> None:
        self.path = path
        # What was found wrong with the file and done about it, for the journal.
        self.problems: list[str] = []
        self._steps: dict[str, Sequence[str]] = {}
        self._lock = threading.RLock()
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
            if set_aside_damaged:
                self._set_aside_if_damaged()
        self._conn = self._connect()
        self._identity = self._file_identity()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions "
                "(name TEXT PRIMARY KEY, version INTEGER)"
            )
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the database {self.path}: {exc}",
                hint="check that the folder is writable and the disk is not full; "
                "a corrupt file can be moved aside and restored from a backup",
            ) from exc
        return conn

    def _file_identity(self) -> tuple[int, int] | None:
        with contextlib.suppress(OSError):
            st = self.path.stat()
            return st.st_dev, st.st_ino
        return None

    def _set_aside_if_damaged(self) -> None:
        if not self.path.exists():
            return
        damage = _damage(self.path)
        if damage is not None:
            aside = _move_aside(self.path, "corrupt")
            self.problems.append(
                f"{self.path} was damaged ({damage}): moved to {aside}; a fresh one was "
                "created (restore the history from a backup if it matters)"
            )

    def check_identity(self) -> str | None:
        """``None`` while the path is still the open file; else what happened (deleted,
        replaced) and what was done: the store is rebuilt at its path from the open
        connection (nothing written so far is lost)."""
        if str(self.path) == ":memory:":
            return None
        with self._lock:
            now = self._file_identity()
            if now is not None and now == self._identity:
                return None
            what = "was deleted" if now is None else "was replaced by another file"
            problem = f"{self.path} {what} under the running agent: " + self._rebuild(now)
            self.problems.append(problem)
            return problem

    def _rebuild(self, found: tuple[int, int] | None) -> str:
        fresh = self.path.with_name(f".{self.path.name}.rebuild")
        _remove(fresh)
        kept = _copy(self._conn, fresh)
        self._conn.close()
        done = "rebuilt from the open file, every record kept" if kept else NOTHING_KEPT
        if found is not None:
            aside = _move_aside(self.path, "displaced", sidecars=False)
            done += f"; the file found there was moved to {aside}"
        _remove(self.path, main=False)  # no stale WAL may meet the rebuilt file
        if kept:
            fresh.replace(self.path)
        self._conn = self._connect()
        self._identity = self._file_identity()
        if not kept:
            for name, steps in self._steps.items():
                self.migrate(name, steps)
        return done

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def migrate(self, name: str, steps: Sequence[str]) -> None:
        """Apply the not yet applied ``steps`` of the schema ``name``, in order."""
        self._steps[name] = steps
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


def _damage(path: Path) -> str | None:
    """Why ``path`` is not a sound database (``PRAGMA quick_check``), or ``None``."""
    try:
        conn = sqlite3.connect(str(path))
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    found = "; ".join(str(row[0]) for row in rows)
    return None if found == "ok" else f"quick_check: {found[:300]}"


def _move_aside(path: Path, why: str, sidecars: bool = True) -> Path:
    """Rename ``path`` (and its -wal and -shm) to ``<name>.<why>-<UTC time>``."""
    aside = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    for suffix in ("", "-wal", "-shm") if sidecars else ("",):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).rename(aside.with_name(aside.name + suffix))
    return aside


def _copy(conn: sqlite3.Connection, target: Path) -> bool:
    """Copy the database of ``conn`` into the new file ``target`` (the online backup API)."""
    try:
        copy = sqlite3.connect(str(target))
        try:
            conn.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")
        finally:
            copy.close()
    except sqlite3.Error:
        _remove(target)
        return False
    return True


def _remove(path: Path, main: bool = True) -> None:
    """Delete a database file and its journals (or its journals alone)."""
    for suffix in ("", "-journal", "-wal", "-shm") if main else ("-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).unlink()


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    hint = "check free disk space and permissions of the data folder"
    if "full" in text:
        hint = "the disk is full: free space (old backups, rotated logs) and try again"
    elif "malformed" in text or "not a database" in text:
        hint = f"{path} is damaged: move it aside and restore it from a backup"
    return StoreError(f"database {path}: {text}", hint=hint)
