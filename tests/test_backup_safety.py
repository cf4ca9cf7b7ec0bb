"""Crafted backups: refused by verify, and nothing written, chmodded or deleted outside
the target or the backups folder (in-process, CLI and API)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from backup_helpers import chained_link_escape, member, write_backup
from conftest import RunningAgent, nexus_cli, private_env

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
from nexus_ops.backup.extract import extract_parts
from nexus_ops.backup.prune import prune
from nexus_ops.backup.retention import RetentionPolicy
from nexus_ops.errors import AgentError, BackupError, InvalidBackupId, NexusOpsError, UnsafeArchive

CRAFTED = "20000101T000000Z-evil"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder a restore must never touch: its listing and mode are checked after."""
    folder = tmp_path / "outside"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "keep.txt").write_text("mine")
    return folder


def untouched(folder: Path) -> bool:
    return [p.name for p in folder.iterdir()] == ["keep.txt"] and (
        folder.stat().st_mode & 0o777 == 0o755
    )


def test_verify_judges_the_whole_archive_and_names_the_members(
    tmp_path: Path, outside: Path
) -> None:
    repo = BackupRepository(tmp_path / "backups")
    write_backup(repo, CRAFTED, chained_link_escape(outside))
    report = verify_backup(repo, CRAFTED)
    assert not report.ok
    through = f"data/./esc{outside}"
    assert report.problems == [
        f"data/esc: links to {'d/up/' * 20}{'../' * 19}.., outside its part data/",
        f"{through}: has an empty or invalid path component",
        f"{through}/pwned.txt: has an empty or invalid path component",
    ]
    # Each of these is harmless alone; together they write through a link.
    write_backup(
        repo,
        "20000101T000000Z-same",
        [
            member("data", kind=tarfile.DIRTYPE),
            member("data/sub", kind=tarfile.DIRTYPE),
            member("data/link", kind=tarfile.SYMTYPE, linkname="sub"),
            member("data/link/x", b"through a link"),
        ],
    )
    report = verify_backup(repo, "20000101T000000Z-same")
    assert report.problems == ["data/link/x: passes through the link data/link"]


def test_restores_of_a_crafted_backup_write_nothing_outside(tmp_path: Path, outside: Path) -> None:
    repo = BackupRepository(tmp_path / "backups")
    write_backup(repo, CRAFTED, chained_link_escape(outside))
    target = tmp_path / "target"
    with pytest.raises(BackupError, match="does not verify") as caught:
        restore_to_folder(repo, CRAFTED, target)
    assert "data/esc" in str(caught.value)
    assert not target.exists()
    locations = OpenCodeLocations(tmp_path / "live" / "config", tmp_path / "live" / "data")
    with pytest.raises(BackupError, match="does not verify"):
        restore_live(repo, CRAFTED, locations, NoServer())
    assert not (tmp_path / "live").exists() or not any((tmp_path / "live").iterdir())
    assert untouched(outside)


def test_extraction_refuses_each_member_of_a_chain_without_a_first_pass(
    tmp_path: Path, outside: Path
) -> None:
    repo = BackupRepository(tmp_path / "backups")
    write_backup(repo, CRAFTED, chained_link_escape(outside))
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchive, match="changed since it was checked: data/esc"):
        extract_parts(repo.archive_path(CRAFTED), {"data": target / "data"}, prechecked=True)
    assert untouched(outside)


def test_extraction_never_follows_a_link_found_on_disk(tmp_path: Path, outside: Path) -> None:
    # The archive is fine; the folder it goes to gained a link (another writer, a race).
    repo = BackupRepository(tmp_path / "backups")
    write_backup(
        repo,
        "20000101T000000Z-fine",
        [
            member("data", kind=tarfile.DIRTYPE),
            member("data/log", kind=tarfile.DIRTYPE, mode=0o777),
            member("data/log/x.log", b"log"),
        ],
    )
    target = tmp_path / "target"
    (target / "data").mkdir(parents=True)
    (target / "data" / "log").symlink_to(outside)
    with pytest.raises(UnsafeArchive, match="data/log is a link or not a folder on disk"):
        extract_parts(repo.archive_path("20000101T000000Z-fine"), {"data": target / "data"})
    assert untouched(outside)


def test_the_cli_refuses_a_crafted_backup_and_writes_nothing_outside(
    tmp_path: Path, outside: Path
) -> None:
    env = private_env(tmp_path / "env")
    write_backup(
        BackupRepository(Path(env["NEXUS_HOME"]) / "backups"), CRAFTED, chained_link_escape(outside)
    )
    target = tmp_path / "target"
    result = nexus_cli(env, "backup", "restore", CRAFTED, "--to", str(target))
    assert result.returncode == 1, result.stderr
    assert "does not verify" in result.stderr and "data/esc: links to" in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.exists()
    assert untouched(outside)


def test_prune_never_deletes_outside_the_backups_folder(tmp_path: Path) -> None:
    repo = BackupRepository(tmp_path / "backups")
    newest = create_backup(repo, BackupSources(folders={}))
    for victim in ("victim.json", "victim.tar.gz"):
        (tmp_path / victim).write_text("not a backup")
    fields = newest.model_dump(mode="json")
    for name, backup_id in (("old", "../victim"), ("other", newest.id)):
        fields.update(id=backup_id, created=1_000_000_000.0)
        (repo.folder / f"{name}.json").write_text(json.dumps(fields))
    assert [m.id for m in repo.manifests()] == [newest.id]  # neither is a backup of its own
    report = prune(repo, RetentionPolicy(keep_last=1, keep_within_days=0), dry_run=False)
    assert report.removed == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups", "victim.json", "victim.tar.gz"]
    assert repo.get(newest.id).id == newest.id
    for bad in ("../victim", "a/b", "x.y", "", "-x", "x" * 65):
        with pytest.raises(InvalidBackupId, match="is not a backup id"):
            repo.get(bad)


def test_the_cli_refuses_ids_that_are_no_backup_ids(tmp_path: Path) -> None:
    env = private_env(tmp_path / "env")
    for args in (("verify", "../../etc/x"), ("restore", "../x", "--to", str(tmp_path / "t"))):
        result = nexus_cli(env, "backup", *args)
        assert result.returncode == 1, result.stderr
        assert f"{args[1]!r} is not a backup id" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "t").exists()


def test_the_api_refuses_a_crafted_backup_and_writes_nothing_outside(
    agent: RunningAgent, tmp_path: Path, outside: Path
) -> None:
    repo = BackupRepository(agent.settings.home / "backups")
    write_backup(repo, CRAFTED, chained_link_escape(outside))
    target = tmp_path / "target"
    for to_folder in (str(target), None):  # into a folder, then over the live one
        with pytest.raises(NexusOpsError, match="does not verify") as caught:
            agent.client.restore_backup(CRAFTED, to_folder=to_folder)
        assert "data/esc: links to" in str(caught.value)
    assert not target.exists()
    assert untouched(outside)
    for call in (agent.client.backup, agent.client.verify_backup, agent.client.restore_backup):
        with pytest.raises(AgentError, match=r"backup_id='x\.tar': String should match") as refused:
            call("x.tar")
        assert refused.value.status == 422
