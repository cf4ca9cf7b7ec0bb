"""Backups: create, list, verify, prune, restore to a folder, safety, and crash behaviour."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from backup_helpers import evil_archive, make_opencode_tree, open_tar, tree_digest

from nexus_ops.backup import (
    BackupRepository,
    BackupSources,
    OpenCodeLocations,
    RetentionPolicy,
    create_backup,
    prune,
    restore_to_folder,
    verify_backup,
)
from nexus_ops.backup.extract import extract_parts
from nexus_ops.backup.models import Manifest
from nexus_ops.errors import BackupError, UnsafeArchive


@pytest.fixture
def locations(tmp_path: Path) -> OpenCodeLocations:
    return make_opencode_tree(tmp_path / "live")


@pytest.fixture
def repo(tmp_path: Path) -> BackupRepository:
    return BackupRepository(tmp_path / "backups")


def test_backup_holds_config_and_data_but_not_caches_or_wal(
    repo: BackupRepository, locations: OpenCodeLocations
) -> None:
    assert (locations.data_dir / "opencode.db-wal").exists() or True
    manifest = create_backup(repo, BackupSources.of(locations), opencode_version="1.18.33")
    paths = {entry.path for entry in manifest.files}
    assert "config/opencode.jsonc" in paths
    assert "data/opencode.db" in paths and "data/auth.json" in paths
    assert "data/snapshot/proj/HEAD" in paths
    assert not any("node_modules" in p for p in paths)
    assert not any(p.endswith(("-wal", "-shm")) for p in paths)
    assert manifest.databases[0].method == "snapshot-copy"
    assert manifest.databases[0].note == ""
    assert manifest.sessions == 3
    assert manifest.opencode_version == "1.18.33" and manifest.host
    assert [m.id for m in repo.manifests()] == [manifest.id]
    assert repo.archive_path(manifest.id).stat().st_size == manifest.archive.size  # type: ignore[union-attr]
    auth = next(e for e in manifest.files if e.path == "data/auth.json")
    assert auth.mode == 0o600


def test_verify_passes_then_catches_a_changed_archive(
    repo: BackupRepository, locations: OpenCodeLocations
) -> None:
    manifest = create_backup(repo, BackupSources.of(locations))
    report = verify_backup(repo, manifest.id)
    assert report.ok, report.problems
    assert report.integrity == {"data/opencode.db": "ok"}
    archive = repo.archive_path(manifest.id)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    report = verify_backup(repo, manifest.id)
    assert not report.ok
    assert "checksum differs" in report.problems[0]


def test_verify_names_each_member_whose_bytes_differ_from_the_manifest(
    repo: BackupRepository, locations: OpenCodeLocations
) -> None:
    # The archive is intact (its checksum matches), but the manifest says other bytes
    # for two members, the database among them: each is named, the rest pass.
    manifest = create_backup(repo, BackupSources.of(locations))
    fields = manifest.model_dump()
    changed = {"data/auth.json", "data/opencode.db"}
    for entry in fields["files"]:
        if entry["path"] in changed:
            entry["sha256"] = "0" * 64
    repo.manifest_path(manifest.id).write_text(json.dumps(fields))
    report = verify_backup(repo, manifest.id)
    assert not report.ok
    assert sorted(report.problems) == [
        f"{path}: size or checksum differs from the manifest" for path in sorted(changed)
    ]
    assert report.integrity == {"data/opencode.db": "ok"}  # the copy was still checked
    assert report.checked_files == len(manifest.files)


def test_verify_runs_integrity_check_on_the_database_copy(
    repo: BackupRepository, locations: OpenCodeLocations, tmp_path: Path
) -> None:
    # Rewrite a backup whose database is damaged but whose checksums are consistent:
    # only integrity_check can tell.
    manifest = create_backup(repo, BackupSources.of(locations))
    work = tmp_path / "work"
    with open_tar(repo.archive_path(manifest.id)) as tar:
        tar.extractall(work, filter="data")
    db = work / "data" / "opencode.db"
    with db.open("r+b") as handle:
        handle.seek(4096)  # the whole second page: the session table's b-tree
        handle.write(os.urandom(4096))
    sources = BackupSources(folders={"config": work / "config", "data": work / "data"})
    damaged = create_backup(repo, sources, raw_fallback=True)
    fields = damaged.model_dump()
    fields["databases"] = [{"path": "data/opencode.db", "method": "online-backup"}]
    repo.manifest_path(damaged.id).write_text(json.dumps(fields))
    report = verify_backup(repo, damaged.id)
    assert not report.ok
    assert report.integrity["data/opencode.db"] != "ok"
    assert any("integrity_check" in p for p in report.problems)


def test_restore_to_folder_gives_back_the_same_files(
    repo: BackupRepository, locations: OpenCodeLocations, tmp_path: Path
) -> None:
    (locations.data_dir / "snapshot" / "link").symlink_to("proj/HEAD")
    manifest = create_backup(repo, BackupSources.of(locations))
    target = tmp_path / "restored"
    report = restore_to_folder(repo, manifest.id, target)
    assert report.ok and report.parts == ["config", "data"]
    assert tree_digest(target / "config") == tree_digest(locations.config_dir)
    live = tree_digest(locations.data_dir)
    restored = tree_digest(target / "data")
    for side in ("opencode.db", "opencode.db-wal", "opencode.db-shm"):
        live.pop(side, None)
        restored.pop(side, None)
    assert restored == live
    conn = sqlite3.connect(target / "data" / "opencode.db")
    assert conn.execute("SELECT COUNT(*) FROM session").fetchone()[0] == 3
    conn.close()
    assert (target / "data" / "auth.json").stat().st_mode & 0o777 == 0o600
    with pytest.raises(BackupError, match="not an empty folder"):
        restore_to_folder(repo, manifest.id, target)


def test_unsafe_archive_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    evil_archive(archive)
    target = tmp_path / "sandbox" / "target"
    target.mkdir(parents=True)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeArchive) as caught:
        extract_parts(archive, {"data": target / "data"})
    message = str(caught.value)
    for reason in (
        "a .. component",
        "absolute path",
        "outside its part",
        "passes through the link",
        "device",
        "hard link",
    ):
        assert reason in message, reason
    assert "data/ok.txt" not in message
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # not even data/ok.txt
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/absolute-evil.txt").exists()


def test_unsafe_backup_in_the_repository_does_not_verify_and_is_not_restored(
    repo: BackupRepository, locations: OpenCodeLocations, tmp_path: Path
) -> None:
    good = create_backup(repo, BackupSources.of(locations))
    evil = repo.archive_path("20000101T000000Z-evil")
    evil_archive(evil)
    fields = good.model_dump()
    fields.update(id="20000101T000000Z-evil", files=[], databases=[])
    from nexus_ops.backup.archive import sha256_file

    fields["archive"] = {
        "name": evil.name,
        "size": evil.stat().st_size,
        "sha256": sha256_file(evil),
    }
    repo.manifest_path("20000101T000000Z-evil").write_text(json.dumps(fields))
    report = verify_backup(repo, "20000101T000000Z-evil")
    assert not report.ok
    assert any("a .. component" in p for p in report.problems)
    target = tmp_path / "out"
    with pytest.raises(BackupError, match="does not verify"):
        restore_to_folder(repo, "20000101T000000Z-evil", target)
    assert not target.exists()


def test_unknown_backup_is_a_clear_error(repo: BackupRepository) -> None:
    with pytest.raises(BackupError, match="no backup 'nope'") as caught:
        repo.get("nope")
    assert "nexus-ops backup list" in (caught.value.hint or "")


def _writer_script(db: Path, stop_file: Path) -> str:
    return f"""
import sqlite3, os, time
conn = sqlite3.connect({str(db)!r}, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA busy_timeout=10000")
conn.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, amount INTEGER, pad TEXT)")
conn.execute("CREATE TABLE IF NOT EXISTS total (one INTEGER PRIMARY KEY, sum INTEGER)")
conn.execute("INSERT OR IGNORE INTO total VALUES (1, 0)")
n = 0
while not os.path.exists({str(stop_file)!r}):
    conn.execute("BEGIN IMMEDIATE")
    for _ in range(20):
        n += 1
        conn.execute("INSERT INTO ledger (amount, pad) VALUES (?, ?)", (n, "x" * 2000))
        conn.execute("UPDATE total SET sum = sum + ? WHERE one = 1", (n,))
    conn.execute("COMMIT")
print(n)
"""


def test_backup_of_a_database_under_constant_writes_is_consistent(
    repo: BackupRepository, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", _writer_script(data / "w.db", stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the WAL grows
        manifests = []
        for _ in range(3):
            manifests.append(create_backup(repo, BackupSources(folders={"data": data})))
        assert (data / "w.db-wal").stat().st_size > 0
    finally:
        stop.touch()
        inserted = int(writer.communicate(timeout=30)[0])
    assert inserted > 0
    counts = []
    for manifest in manifests:
        report = verify_backup(repo, manifest.id)
        assert report.ok, report.problems
        target = tmp_path / f"restored-{manifest.id}"
        restore_to_folder(repo, manifest.id, target)
        conn = sqlite3.connect(target / "data" / "w.db")
        rows, ledger_sum = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM ledger"
        ).fetchone()
        total = conn.execute("SELECT sum FROM total").fetchone()[0]
        conn.close()
        assert rows % 20 == 0, "a transaction was torn"
        assert ledger_sum == total, "the two tables disagree: the copy is torn"
        counts.append(rows)
    assert counts == sorted(counts) and counts[-1] > 0


def test_kill_9_during_a_backup_leaves_no_listed_partial_archive(
    repo: BackupRepository, tmp_path: Path
) -> None:
    data = tmp_path / "big"
    data.mkdir()
    for i in range(40):
        (data / f"blob{i}.bin").write_bytes(os.urandom(5_000_000))
    script = (
        "from pathlib import Path\n"
        "from nexus_ops.backup import BackupRepository, BackupSources, create_backup\n"
        f"create_backup(BackupRepository(Path({str(repo.folder)!r})), "
        f"BackupSources(folders={{'data': Path({str(data)!r})}}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(repo.folder.glob(".*.part")):
        time.sleep(0.01)
    partials = list(repo.folder.glob(".*.part"))
    assert partials, "the backup never started writing"
    proc.send_signal(signal.SIGKILL)  # at once: 200 MB take zstd well under a second
    proc.wait(timeout=10)
    assert repo.manifests() == []
    assert any(p.name.endswith(".part") for p in repo.leftovers())
    report = prune(repo, RetentionPolicy(), dry_run=False)
    assert report.cleaned and repo.leftovers() == []
    manifest = create_backup(repo, BackupSources(folders={"data": data}))
    assert [m.id for m in repo.manifests()] == [manifest.id]


def test_an_archive_without_its_manifest_is_not_listed(
    repo: BackupRepository, locations: OpenCodeLocations
) -> None:
    manifest = create_backup(repo, BackupSources.of(locations))
    repo.manifest_path(manifest.id).unlink()
    assert repo.manifests() == []
    assert repo.archive_path(manifest.id) in repo.leftovers()


def test_prune_dry_run_removes_nothing_and_prune_follows_the_policy(
    repo: BackupRepository, locations: OpenCodeLocations
) -> None:
    made = [create_backup(repo, BackupSources.of(locations)) for _ in range(4)]
    # Age them: one backup per day, 0..3 days old.
    for age, manifest in enumerate(reversed(made)):
        fields = manifest.model_dump()
        fields["created"] = manifest.created - age * 86400
        repo.manifest_path(manifest.id).write_text(json.dumps(fields))
    policy = RetentionPolicy(keep_last=2, keep_within_days=0)
    plan = prune(repo, policy, dry_run=True)
    assert plan.dry_run and len(plan.to_remove) == 2
    assert len(repo.manifests()) == 4
    done = prune(repo, policy, dry_run=False)
    assert sorted(done.removed) == sorted(plan.to_remove)
    assert {m.id for m in repo.manifests()} == {made[-1].id, made[-2].id}
    assert done.freed_bytes > 0


def test_manifest_is_written_last_and_mentions_every_member(
    repo: BackupRepository, locations: OpenCodeLocations
) -> None:
    manifest = create_backup(repo, BackupSources.of(locations))
    archive = repo.archive_path(manifest.id)
    assert repo.manifest_path(manifest.id).stat().st_mtime_ns >= archive.stat().st_mtime_ns
    with open_tar(archive) as tar:
        names = tar.getnames()
        inner = tar.extractfile("MANIFEST.json")
        assert inner is not None
        embedded = Manifest.model_validate_json(inner.read())
    assert names[-1] == "MANIFEST.json"
    assert sorted(names[:-1]) == sorted(e.path for e in manifest.files)
    assert embedded.files == manifest.files


def test_the_scheduled_run_creates_verifies_prunes_and_records(tmp_path: Path) -> None:
    from conftest import private_env

    from nexus_ops.backup import BackupService
    from nexus_ops.config import load_settings

    env = private_env(tmp_path / "env")
    live = make_opencode_tree(tmp_path / "live")
    env.update(
        XDG_CONFIG_HOME=str(live.config_dir.parent),
        XDG_DATA_HOME=str(live.data_dir.parent),
        NEXUS_BACKUP_KEEP_LAST="2",
        NEXUS_BACKUP_KEEP_WITHIN_DAYS="0",
    )
    service = BackupService.open(load_settings(env), environ=env)
    made = [service.scheduled_run() for _ in range(3)]
    assert [b.id for b in service.backups()] == [made[2].id, made[1].id]  # pruned to 2
    assert all(m.kind == "scheduled" for m in made)
    kinds = [e.kind for e in service.journal.events()] if service.journal else []
    assert kinds.count("backup") == 3 and "prune" in kinds
    last = service.last_success()
    assert last is not None and last.backup_id == made[2].id and last.size
    counts = service.runs.counts()
    assert counts[("create", True)] == 3 and counts[("verify", True)] == 3
    text = "\n".join(str(m) for m in service.collector().collect())
    assert "nexus_backup_last_success_timestamp_seconds" in text


def test_a_failed_backup_is_recorded_and_journalled(tmp_path: Path) -> None:
    from conftest import private_env

    from nexus_ops.backup import BackupService
    from nexus_ops.config import load_settings

    env = private_env(tmp_path / "env")
    live = make_opencode_tree(tmp_path / "live")
    (live.data_dir / "opencode.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000)
    env.update(XDG_CONFIG_HOME=str(live.config_dir.parent), XDG_DATA_HOME=str(live.data_dir.parent))
    service = BackupService.open(load_settings(env), environ=env)
    with pytest.raises(BackupError, match="could not copy the database"):
        service.create(trigger="schedule")
    assert service.backups() == []
    assert service.runs.counts() == {("create", False): 1}
    assert service.journal is not None
    assert [e.kind for e in service.journal.events()] == ["backup_failed"]


def test_a_member_made_unsafe_after_the_check_is_still_refused(tmp_path: Path) -> None:
    # As if the archive were swapped between verify and extract: each member is
    # checked again as it is written.
    archive = tmp_path / "evil.tar.gz"
    evil_archive(archive)
    target = tmp_path / "sandbox" / "target"
    with pytest.raises(UnsafeArchive, match="changed since it was checked"):
        extract_parts(archive, {"data": target / "data"}, prechecked=True)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "sandbox" / "escaped.txt").exists()
    assert not (target / "data").exists()  # what was written before it (ok.txt) is removed


def test_archives_are_plain_tar_zst_for_gnu_tar(
    repo: BackupRepository, locations: OpenCodeLocations, tmp_path: Path
) -> None:
    import shutil

    if shutil.which("tar") is None or shutil.which("zstd") is None:
        pytest.skip("no tar or zstd")
    big = os.urandom(9 << 20)  # several of zstd's jobs
    (locations.data_dir / "snapshot" / "big").write_bytes(big)
    manifest = create_backup(repo, BackupSources.of(locations))
    archive = repo.archive_path(manifest.id)
    assert archive.name.endswith(".tar.zst") and manifest.archive is not None
    assert manifest.archive.format == "tar.zst"
    out = tmp_path / "untarred"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(archive), "-C", str(out)], check=True)
    assert (out / "config" / "opencode.jsonc").read_text() == (
        locations.config_dir / "opencode.jsonc"
    ).read_text()
    assert (out / "data" / "snapshot" / "big").read_bytes() == big
    assert (out / "MANIFEST.json").is_file()


def test_a_backup_of_an_older_version_in_tar_gz_still_verifies_and_restores(
    repo: BackupRepository, locations: OpenCodeLocations, tmp_path: Path
) -> None:
    import gzip

    from nexus_ops.backup.archive import sha256_file

    made = create_backup(repo, BackupSources.of(locations))
    new = repo.archive_path(made.id)
    old = new.with_name(f"{made.id}.tar.gz")  # what older versions wrote: gzip, no format
    with (
        open_tar(new) as tar,
        gzip.open(old, "wb") as out,
        tarfile.open(fileobj=out, mode="w|") as copy,
    ):
        for member in tar.getmembers():
            copy.addfile(member, tar.extractfile(member) if member.isfile() else None)
    new.unlink()
    fields = json.loads(repo.manifest_path(made.id).read_text())
    fields["archive"] = {"name": old.name, "size": old.stat().st_size, "sha256": sha256_file(old)}
    repo.manifest_path(made.id).write_text(json.dumps(fields))
    assert [m.id for m in repo.manifests()] == [made.id]
    assert repo.get(made.id).archive.format == "tar.gz"  # type: ignore[union-attr]
    assert verify_backup(repo, made.id).ok
    report = restore_to_folder(repo, made.id, tmp_path / "restored")
    assert report.ok
    restored = tree_digest(tmp_path / "restored")
    assert {e.path: e.sha256 for e in made.files if e.type == "file"} == {
        path: digest for path, digest in restored.items() if digest != "dir"
    }
    assert repo.delete(made.id) > 0 and not old.exists()
