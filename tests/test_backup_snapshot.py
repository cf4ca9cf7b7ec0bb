"""Copies of live databases taken file by file under a read transaction: never torn.

A writer process commits transactions that keep an invariant (amounts move between
accounts, so their sum is constant; every transaction adds one entry and sets the
counter to the number of entries) while checkpoints run, and every copy must pass
integrity_check and keep the invariant.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_helpers import make_opencode_tree

from nexus_ops.backup import BackupRepository, BackupSources, create_backup, verify_backup
from nexus_ops.store import snapshot_copy as snapshot_module
from nexus_ops.store.backups_copy import integrity_check
from nexus_ops.store.snapshot_copy import snapshot_copy

ACCOUNTS, BALANCE = 50, 1000

WRITER = f"""
import os, random, sqlite3, sys, time
db, stop = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA busy_timeout=10000")
conn.execute("PRAGMA wal_autocheckpoint=8")  # a checkpoint every few transactions
n = conn.execute("SELECT n FROM counter").fetchone()[0]
rnd = random.Random(1)
while not os.path.exists(stop):
    conn.execute("BEGIN IMMEDIATE")
    for _ in range(5):
        a, b, amount = rnd.randrange({ACCOUNTS}), rnd.randrange({ACCOUNTS}), rnd.randrange(50)
        conn.execute("UPDATE account SET balance = balance - ? WHERE id = ?", (amount, a))
        conn.execute("UPDATE account SET balance = balance + ? WHERE id = ?", (amount, b))
    n += 1
    conn.execute("INSERT INTO entry VALUES (?, randomblob(3000))", (n,))
    conn.execute("UPDATE counter SET n = ?", (n,))
    conn.execute("COMMIT")
    time.sleep(0.001)  # in rollback mode a writer that never pauses starves readers
print(n)
"""

CHECKPOINTER = """
import os, sqlite3, sys, time
db, stop = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, isolation_level=None)
moved = 0
while not os.path.exists(stop):
    busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    moved += max(done, 0)
    time.sleep(0.002)
print(moved)
"""


def make_ledger(db: Path, journal_mode: str) -> None:
    """The invariant's tables, and a few MiB of entries so that a copy takes a while."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE account (id INTEGER PRIMARY KEY, balance INTEGER)")
    conn.execute("CREATE TABLE entry (n INTEGER PRIMARY KEY, pad BLOB)")
    conn.execute("CREATE TABLE counter (n INTEGER)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO account VALUES (?, ?)", [(i, BALANCE) for i in range(ACCOUNTS)])
    conn.executemany(
        "INSERT INTO entry VALUES (?, randomblob(3000))", [(i,) for i in range(1, 3001)]
    )
    conn.execute("INSERT INTO counter VALUES (3000)")
    conn.execute("COMMIT")
    conn.close()


def ledger_state(db: Path) -> int:
    """The counter of a copy that keeps the invariant; fails the test otherwise."""
    assert integrity_check(db) == "ok"
    conn = sqlite3.connect(db)
    try:
        (total,) = conn.execute("SELECT SUM(balance) FROM account").fetchone()
        (entries, last) = conn.execute("SELECT COUNT(*), MAX(n) FROM entry").fetchone()
        (counter,) = conn.execute("SELECT n FROM counter").fetchone()
    finally:
        conn.close()
    assert total == ACCOUNTS * BALANCE, "amounts appeared or vanished: the copy is torn"
    assert entries == last == counter, "entries and counter disagree: the copy is torn"
    return int(counter)


def start(script: str, db: Path, stop: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, str(db), str(stop)], stdout=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str]) -> int:
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return int(out)


@pytest.fixture
def busy_ledger(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, str]]:
    """A ledger in ``request.param`` journal mode, written by one process and (in WAL
    mode) checkpointed by another, until the test ends."""
    mode = request.param
    db, stop = tmp_path / "live" / "ledger.db", tmp_path / "stop"
    db.parent.mkdir()
    make_ledger(db, mode)
    procs = [start(WRITER, db, stop)] + ([start(CHECKPOINTER, db, stop)] if mode == "wal" else [])
    time.sleep(0.3)
    try:
        yield db, mode
    finally:
        stop.touch()
        counts = [finish(proc) for proc in procs]
    assert counts[0] > 3000 + 50, "the writer hardly committed: the test proved nothing"
    if mode == "wal":
        assert counts[1] > 0, "no checkpoint moved a frame while the copies were taken"


@pytest.mark.parametrize("busy_ledger", ["wal", "delete"], indirect=True)
def test_copies_taken_while_a_writer_commits_and_checkpoints_run_are_consistent(
    busy_ledger: tuple[Path, str], tmp_path: Path
) -> None:
    db, mode = busy_ledger
    wal = db.with_name(db.name + "-wal")
    counters, wal_sizes = [], []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline or len(counters) < 20:
        copy = tmp_path / f"copy-{len(counters)}.db"
        wal_sizes.append(wal.stat().st_size if wal.exists() else 0)
        snapshot_copy(db, copy)
        assert not copy.with_name(copy.name + "-wal").exists()
        counters.append(ledger_state(copy))
        copy.unlink()
    assert counters == sorted(counters) and counters[-1] > counters[0]
    assert any(wal_sizes) == (mode == "wal"), "the copies did not meet the journal mode's case"


def interfere_after_the_main_file(db: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Between the copy of the main file and that of the WAL: commits, a TRUNCATE
    checkpoint (which, unless a reader stops it, folds the WAL into the main file and
    empties it), and more commits. Returns the checkpoint's busy flag."""
    real_copy = snapshot_module._copy_file
    busy: list[int] = []

    def copy_then_write(source: Path, destination: Path) -> None:
        real_copy(source, destination)
        if source != db:
            return
        other = sqlite3.connect(db, isolation_level=None, timeout=0)  # no wait for readers
        try:
            for round_ in range(2):
                for n in range(40):
                    other.execute("BEGIN IMMEDIATE")
                    other.execute("UPDATE account SET balance = balance - 7 WHERE id = ?", (n,))
                    other.execute("UPDATE account SET balance = balance + 7 WHERE id = ?", (n + 1,))
                    other.execute("INSERT INTO entry (pad) VALUES (randomblob(3000))")
                    other.execute("UPDATE counter SET n = n + 1")
                    other.execute("COMMIT")
                if round_ == 0:
                    busy.append(other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])
        finally:
            other.close()

    monkeypatch.setattr(snapshot_module, "_copy_file", copy_then_write)
    return busy


def test_a_checkpoint_between_the_two_files_cannot_tear_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the read transaction this copy pairs the old main file with a new WAL
    # whose frames belong to a newer main file: entries vanish, pages go missing.
    db = tmp_path / "ledger.db"
    make_ledger(db, "wal")
    keep_wal = sqlite3.connect(db)  # an open connection keeps the WAL file
    keep_wal.execute("UPDATE counter SET n = n").connection.commit()
    busy = interfere_after_the_main_file(db, monkeypatch)
    snapshot_copy(db, tmp_path / "copy.db")
    assert ledger_state(tmp_path / "copy.db") >= 3000
    assert busy == [1], "the checkpoint could fold the WAL away under the copy"
    keep_wal.close()
    assert ledger_state(db) == 3080  # the live database took every commit


def test_a_failed_copy_falls_back_to_the_backup_api_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    locations = make_opencode_tree(tmp_path / "live", sessions=4)

    def no_space(source: Path, destination: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapshot_module, "_copy_file", no_space)
    repo = BackupRepository(tmp_path / "backups")
    with caplog.at_level(logging.WARNING):
        manifest = create_backup(repo, BackupSources.of(locations))
    (database,) = manifest.databases
    assert database.method == "online-backup" and database.sessions == 4
    assert "No space left on device" in database.note
    assert "copied with the online backup API" in database.note
    assert any("online backup API" in record.getMessage() for record in caplog.records)
    assert verify_backup(repo, manifest.id).ok
