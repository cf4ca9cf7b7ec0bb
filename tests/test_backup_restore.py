"""Live restores: swap, pre-restore backup, integrity, health, and rollback on any failure."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from backup_helpers import DirectServer, install_config, make_opencode_tree, tree_digest

from nexus_ops.backup import (
    BackupRepository,
    BackupSources,
    NoServer,
    OpenCodeLocations,
    create_backup,
    restore_live,
    restore_to_folder,
    verify_backup,
)
from nexus_ops.errors import BackupError


def sessions(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM session ORDER BY id")]
    finally:
        conn.close()


def damage(locations: OpenCodeLocations) -> None:
    """What an operator fears: rows added since the backup, a config change, a lost file."""
    conn = sqlite3.connect(locations.database)
    conn.execute("INSERT INTO session VALUES ('ses_new', 'after the backup')")
    conn.commit()
    conn.close()
    (locations.config_dir / "opencode.jsonc").write_text('{"theme": "changed"}')
    (locations.data_dir / "auth.json").unlink()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[BackupRepository, OpenCodeLocations, str]:
    locations = make_opencode_tree(tmp_path / "live")
    repo = BackupRepository(tmp_path / "backups")
    manifest = create_backup(repo, BackupSources.of(locations))
    return repo, locations, manifest.id


def test_restore_replaces_live_folders_and_keeps_the_previous_state(
    setup: tuple[BackupRepository, OpenCodeLocations, str],
) -> None:
    repo, locations, backup_id = setup
    damage(locations)
    report = restore_live(repo, backup_id, locations, NoServer())
    assert report.ok, report
    assert sessions(locations.database) == ["ses_000", "ses_001", "ses_002"]
    assert (locations.data_dir / "auth.json").exists()
    assert "theme" not in (locations.config_dir / "opencode.jsonc").read_text()
    assert (locations.config_dir / "node_modules" / "@opencode-ai" / "plugin" / "index.js").exists()
    # What was replaced is a backup of its own, and it verifies.
    pre = repo.get(report.pre_restore_backup or "")
    assert pre.kind == "pre-restore"
    assert verify_backup(repo, pre.id).ok
    assert "data/auth.json" not in {e.path for e in pre.files}
    assert pre.sessions == 4
    leftovers = [p.name for p in locations.data_dir.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_failing_check_after_the_swap_puts_everything_back(
    setup: tuple[BackupRepository, OpenCodeLocations, str],
) -> None:
    repo, locations, backup_id = setup
    damage(locations)
    side = ("opencode.db-wal", "opencode.db-shm")  # SQLite makes these for any reader
    before_config = tree_digest(locations.config_dir, skip=())
    before_data = tree_digest(locations.data_dir, skip=side)

    def confirm() -> None:
        raise BackupError("the sessions did not come back")

    report = restore_live(repo, backup_id, locations, NoServer(), confirm=confirm)
    assert not report.ok and report.rolled_back
    assert report.error == "the sessions did not come back"
    assert tree_digest(locations.config_dir, skip=()) == before_config
    assert tree_digest(locations.data_dir, skip=side) == before_data
    assert "ses_new" in sessions(locations.database)
    assert any("previous folders are back" in step for step in report.steps)


def test_restoring_only_the_data_part_leaves_the_config_alone(
    setup: tuple[BackupRepository, OpenCodeLocations, str],
) -> None:
    repo, locations, backup_id = setup
    damage(locations)
    report = restore_live(repo, backup_id, locations, NoServer(), parts=["data"])
    assert report.ok and report.parts == ["data"]
    assert "theme" in (locations.config_dir / "opencode.jsonc").read_text()
    assert sessions(locations.database) == ["ses_000", "ses_001", "ses_002"]


def test_a_deleted_data_folder_is_restored(
    setup: tuple[BackupRepository, OpenCodeLocations, str],
) -> None:
    repo, locations, backup_id = setup
    import shutil

    shutil.rmtree(locations.data_dir)
    report = restore_live(repo, backup_id, locations, NoServer())
    assert report.ok
    assert sessions(locations.database) == ["ses_000", "ses_001", "ses_002"]


def test_a_backup_that_does_not_verify_is_refused_before_the_server_stops(
    setup: tuple[BackupRepository, OpenCodeLocations, str],
) -> None:
    repo, locations, backup_id = setup
    archive = repo.archive_path(backup_id)
    archive.write_bytes(archive.read_bytes()[:-100])
    stops: list[str] = []

    class Recording(NoServer):
        def stop(self) -> None:
            stops.append("stop")

    with pytest.raises(BackupError, match="does not verify"):
        restore_live(repo, backup_id, locations, Recording())
    assert stops == []


# ---- with the real OpenCode server -------------------------------------------------------


@pytest.fixture
def real_server(
    tmp_path: Path, opencode_bin: Path, opencode_config: Path
) -> tuple[DirectServer, OpenCodeLocations]:
    from conftest import free_port, private_env

    env = private_env(tmp_path / "env")
    install_config(opencode_config, env)
    server = DirectServer(opencode_bin, env, free_port(), "s3cret")
    server.start()
    server.wait_healthy(60)
    yield server, OpenCodeLocations.from_environ(env)
    server.stop()


def session_ids(server: DirectServer) -> set[str]:
    response = server.get("/session")
    response.raise_for_status()
    return {s["id"] for s in response.json()}


@pytest.mark.opencode
def test_restore_under_a_real_server_brings_its_sessions_back(
    real_server: tuple[DirectServer, OpenCodeLocations], tmp_path: Path
) -> None:
    server, locations = real_server
    for _ in range(3):
        server.post("/session", {}).raise_for_status()
    held = session_ids(server)
    repo = BackupRepository(tmp_path / "backups")
    manifest = create_backup(repo, BackupSources.of(locations))  # while the server runs
    assert manifest.sessions == 3
    server.post("/session", {}).raise_for_status()
    with locations.database.open("r+b") as handle:  # corrupt the header
        handle.write(b"\0" * 100)
    report = restore_live(repo, manifest.id, locations, server)
    assert report.ok, report
    assert session_ids(server) == held
    assert server.starts == 2


@pytest.mark.opencode
def test_backups_taken_while_the_server_creates_sessions_restore_them(
    real_server: tuple[DirectServer, OpenCodeLocations], tmp_path: Path
) -> None:
    server, locations = real_server
    created: list[str] = []
    stop = threading.Event()

    def create_sessions() -> None:
        while not stop.is_set() and len(created) < 500:
            response = server.post("/session", {})
            response.raise_for_status()
            created.append(response.json()["id"])

    writer = threading.Thread(target=create_sessions)
    writer.start()
    repo = BackupRepository(tmp_path / "backups")
    taken = []
    try:
        while len(created) < 3 and writer.is_alive():
            time.sleep(0.05)
        for _ in range(3):
            before = set(created)
            assert (locations.data_dir / "opencode.db-wal").exists()  # the live WAL is copied
            taken.append((before, create_backup(repo, BackupSources.of(locations))))
    finally:
        stop.set()
        writer.join(timeout=30)
    after = set(created)
    assert len(after) > len(taken[-1][0]), "no session was created during the backups"
    for before, manifest in taken:
        (database,) = manifest.databases
        assert database.method == "snapshot-copy", database.note
        assert verify_backup(repo, manifest.id).ok
        restore_to_folder(repo, manifest.id, tmp_path / manifest.id)
        restored = set(sessions(tmp_path / manifest.id / "data" / "opencode.db"))
        assert before <= restored <= after
        assert database.sessions == len(restored)


@pytest.mark.opencode
def test_a_restore_the_server_cannot_start_on_is_rolled_back(
    real_server: tuple[DirectServer, OpenCodeLocations], tmp_path: Path
) -> None:
    server, locations = real_server
    server.post("/session", {}).raise_for_status()
    config = locations.config_dir / "opencode.jsonc"
    good = config.read_text()
    config.write_text('{"model": [')  # OpenCode refuses to start with this
    repo = BackupRepository(tmp_path / "backups")
    bad = create_backup(repo, BackupSources.of(locations))
    config.write_text(good)
    held = session_ids(server)
    report = restore_live(repo, bad.id, locations, server, health_timeout=15)
    assert not report.ok and report.rolled_back
    assert config.read_text() == good
    server.wait_healthy(30)
    assert session_ids(server) == held
