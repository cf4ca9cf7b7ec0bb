"""Copying and checking live SQLite databases that are not ours (OpenCode's).

A live database in WAL mode copied with ``cp`` or ``tar`` can be torn: pages of
the main file and of the write-ahead log from different moments. SQLite's online
backup API copies a consistent snapshot while writers carry on; in WAL mode one
step (``pages=-1``) holds a read transaction only, so writers are never blocked.
:func:`consistent_copy` first copies the files under such a read transaction
(:mod:`.snapshot_copy`, about a third of the backup API's CPU time) and falls back
to the backup API when that fails, saying why.

>>> import tempfile
>>> from pathlib import Path
>>> folder = Path(tempfile.mkdtemp())
>>> conn = sqlite3.connect(folder / "a.db")
>>> _ = conn.execute("CREATE TABLE session (id TEXT)")
>>> conn.commit()
>>> online_copy(folder / "a.db", folder / "b.db")
>>> integrity_check(folder / "b.db"), session_ids(folder / "b.db")
('ok', [])
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nexus_ops.errors import BackupError
from nexus_ops.store.snapshot_copy import side_file, snapshot_copy

BUSY_TIMEOUT_MS = 10_000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopyOutcome:
    """How a database was copied, and why the fast way was not taken when it was not."""

    method: Literal["snapshot-copy", "online-backup"]
    note: str = ""


def consistent_copy(source: Path, destination: Path) -> CopyOutcome:
    """Copy the live database ``source`` to the new file ``destination``: its files under
    a read transaction, or else with the online backup API (raises only when that fails)."""
    try:
        snapshot_copy(source, destination)
    except Exception as exc:  # any failure of the fast way: the backup API is always right
        for suffix in ("", "-wal", "-shm", "-journal"):
            side_file(destination, suffix).unlink(missing_ok=True)
        why = exc.message if isinstance(exc, BackupError) else f"{type(exc).__name__}: {exc}"
        note = f"copied with the online backup API: {why}"
        log.warning("backup of %s %s", source, note)
        online_copy(source, destination)
        return CopyOutcome("online-backup", note)
    return CopyOutcome("snapshot-copy")


def online_copy(source: Path, destination: Path) -> None:
    """Copy the database ``source`` to ``destination`` with SQLite's online backup API."""
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise _copy_error(source, exc) from exc
    try:
        src.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        dst = sqlite3.connect(destination)
        try:
            # A scratch copy, archived then deleted: no journal, no fsync (the archive
            # is what gets synced). Halves the copy's time.
            dst.execute("PRAGMA journal_mode=OFF")
            dst.execute("PRAGMA synchronous=OFF")
            src.backup(dst, pages=-1)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise _copy_error(source, exc) from exc
    finally:
        src.close()


def _copy_error(source: Path, exc: sqlite3.Error) -> BackupError:
    return BackupError(
        f"could not copy the database {source}: {exc}",
        hint="if it is damaged, restore it from a backup (runbook database_failure)",
    )


def integrity_check(path: Path, quick: bool = False) -> str:
    """``'ok'``, or what ``PRAGMA integrity_check`` (or ``quick_check``) reports."""
    if not path.is_file():
        return f"missing: {path} does not exist"
    pragma = "quick_check" if quick else "integrity_check"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return f"cannot open: {exc}"
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        rows = conn.execute(f"PRAGMA {pragma}").fetchall()
    except sqlite3.Error as exc:
        return f"failed: {exc}"
    finally:
        conn.close()
    lines = [str(row[0]) for row in rows]
    return "ok" if lines == ["ok"] else "; ".join(lines[:20])


def session_ids(path: Path) -> list[str] | None:
    """The ids in OpenCode's ``session`` table, sorted; None when the table is not there."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    with contextlib.closing(conn):
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            rows = conn.execute("SELECT id FROM session ORDER BY id").fetchall()
        except sqlite3.Error:
            return None
    return [str(row[0]) for row in rows]


def checkpoint(path: Path) -> None:
    """Fold the write-ahead log into the main file (used on copies, never on live data)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise BackupError(f"could not checkpoint {path}: {exc}") from exc
    finally:
        conn.close()
