"""A consistent copy of a live SQLite database by copying its files in the kernel.

SQLite's online backup API copies a database page by page through SQLite's pager:
correct, but it costs about as much CPU as compressing the result. This copies the
files themselves (``shutil.copyfile``: ``sendfile`` in the kernel on Linux) while a
read transaction of ours pins a snapshot, then makes the copy one file and checks it.

Why the pair of files copied that way is a consistent committed state, in WAL mode
(https://www.sqlite.org/wal.html, https://www.sqlite.org/walformat.html):

* Our connection runs ``BEGIN`` and a ``SELECT`` on ``sqlite_master`` and keeps that
  transaction open while both files are copied. That holds ``WAL_READ_LOCK(N)``
  shared, with read-mark[N] = M, the last frame committed when our snapshot began.
* A checkpoint that sees that lock never moves more than the first M frames of the
  WAL into the main file. So while we copy, the main file changes only in pages that
  frames 1..M also hold; every other page stays as it is.
* A WAL reset (a writer rewinding the WAL to its start) needs every
  ``WAL_READ_LOCK(N)``, N > 0, to be free; and RESTART and TRUNCATE checkpoints wait
  for (or give up on) readers like us. So while we copy, frames 1..M stay in the WAL
  file, untouched: frames are only ever appended after them.
* When our lock is ``WAL_READ_LOCK(0)`` (the WAL was wholly back-filled when our
  snapshot began), we promised to read only the main file: no checkpoint may write
  to it at all, so the main file we copy is our snapshot exactly. The WAL may be
  reset meanwhile, but a new WAL's frames apply on top of that same main file.
* We copy the main file first, then the WAL. Opening the copy, SQLite rebuilds the
  WAL index from the copied WAL alone (no ``-shm`` is copied): it replays every
  frame whose salts match the WAL header and whose running checksums hold, up to the
  last commit frame, and drops the rest. Frames 1..M are whole, so every page a
  concurrent checkpoint was writing while we read the main file (torn or not) is
  replaced by its WAL frame. Frames written after M are later commits; a commit
  being appended while we read is a torn tail, which fails its checksum and is
  dropped, like after a crash. What opens is our snapshot or a later commit.

Then the copy is checkpointed (``TRUNCATE``) into one file and must pass
``PRAGMA quick_check``; any failure is an error, and the caller falls back to the
online backup API.

In rollback-journal mode the same transaction holds a SHARED lock on the main file:
no writer can commit (it needs the EXCLUSIVE lock) until we end it, so the main file
copied under it is a committed state and needs no journal. Writers wait for the
copy, as they do for the backup API, for a shorter time.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> live = sqlite3.connect(folder / "a.db", isolation_level=None)
>>> _ = live.execute("PRAGMA journal_mode=WAL")
>>> _ = live.execute("CREATE TABLE t (x)"), live.execute("INSERT INTO t VALUES (1)")
>>> snapshot_copy(folder / "a.db", folder / "b.db")  # the row is still in the WAL
>>> sorted(path.name for path in folder.iterdir() if path.name.startswith("b.db"))
['b.db']
>>> sqlite3.connect(folder / "b.db").execute("SELECT x FROM t").fetchall()
[(1,)]
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

from nexus_ops.errors import BackupError

BUSY_TIMEOUT_MS = 10_000
# SQLite clamps it to its compile-time limit (2 GiB by default): the check of a
# private copy reads its pages through the map, without copying them into a cache.
MMAP_BYTES = 1 << 40


def snapshot_copy(source: Path, destination: Path) -> None:
    """Copy the live database ``source`` to the new file ``destination``; raise
    :class:`BackupError` when that cannot be done (the caller removes what is left)."""
    try:
        conn = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise _error(source, f"cannot open it: {exc}") from exc
    try:
        conn.isolation_level = None  # our own BEGIN, held until the files are copied
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        wal = _hold_snapshot(conn)
        _copy_file(source, destination)
        if wal:
            _copy_file(side_file(source, "-wal"), side_file(destination, "-wal"))
    except (sqlite3.Error, OSError) as exc:
        raise _error(source, str(exc)) from exc
    finally:
        conn.close()  # ends the read transaction
    _settle(source, destination)


def side_file(database: Path, suffix: str) -> Path:
    """``opencode.db`` -> ``opencode.db-wal`` (``-shm``, ``-journal``)."""
    return database.with_name(database.name + suffix)


def _hold_snapshot(conn: sqlite3.Connection) -> bool:
    """Begin the read transaction that pins what we copy; True in WAL mode.

    The journal mode is read inside it: leaving or entering WAL mode needs an
    EXCLUSIVE lock, which our transaction forbids until it ends.
    """
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    return str(mode).lower() == "wal"


def _copy_file(source: Path, destination: Path) -> None:
    """The whole file, to its end as it is then; nothing when ``source`` is gone
    (a WAL that the last connection deleted)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.copyfile(source, destination)


def _settle(source: Path, destination: Path) -> None:
    """Fold the copied WAL into the copy and check it with ``PRAGMA quick_check``."""
    try:
        conn = sqlite3.connect(destination, isolation_level=None)
    except sqlite3.Error as exc:
        raise _error(source, f"cannot open the copy: {exc}") from exc
    try:
        # A scratch copy, archived then deleted: no fsync (the archive is synced).
        conn.execute("PRAGMA synchronous=OFF")
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise _error(source, "the copy's write-ahead log could not be checkpointed")
        conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        lines = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.Error as exc:
        raise _error(source, f"the copy cannot be read: {exc}") from exc
    finally:
        conn.close()  # the last connection: removes the copy's -wal and -shm
    if lines != ["ok"]:
        raise _error(source, "the copy fails quick_check: " + "; ".join(lines[:5]))


def _error(source: Path, why: str) -> BackupError:
    return BackupError(
        f"could not copy the database {source} file by file: {why}",
        hint="the online backup API copies it instead",
    )
