"""What a restore may expand to: a decompression bomb, a target without the room, and a
disk that fills up while extracting (a real small tmpfs, when the tests run as root)."""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backup_helpers import member, tree_digest, write_backup
from conftest import nexus_cli, private_env

from nexus_ops.backup import (
    BackupRepository,
    NoServer,
    OpenCodeLocations,
    restore_live,
    restore_to_folder,
    verify_backup,
)
from nexus_ops.errors import BackupError

BOMB = "20000101T000000Z-bomb"
Mount = Callable[[str], Path]


def bomb() -> list[tuple[tarfile.TarInfo, bytes]]:
    """65 MiB of zeros: an archive of a few KiB, thousands of times smaller."""
    return [member("data", kind=tarfile.DIRTYPE), member("data/zeros", bytes(65 << 20))]


def test_a_decompression_bomb_does_not_verify_and_is_not_extracted(tmp_path: Path) -> None:
    repo = BackupRepository(tmp_path / "backups")
    write_backup(repo, BOMB, bomb())
    report = verify_backup(repo, BOMB)
    assert not report.ok and report.checked_files == 0  # not even read
    assert len(report.problems) == 1
    assert "its files add up to 65.0 MiB" in report.problems[0]
    assert "NEXUS_BACKUP_MAX_EXPANSION_RATIO (1000)" in report.problems[0]
    target = tmp_path / "target"
    with pytest.raises(BackupError, match="does not verify"):
        restore_to_folder(repo, BOMB, target)
    assert not target.exists()
    # The operator who knows the data is sparse raises the ratio.
    assert verify_backup(BackupRepository(repo.folder, max_expansion_ratio=1e6), BOMB).ok


def test_the_expansion_ratio_is_a_setting(tmp_path: Path) -> None:
    env = private_env(tmp_path / "env")
    write_backup(BackupRepository(Path(env["NEXUS_HOME"]) / "backups"), BOMB, bomb())
    refused = nexus_cli(env, "backup", "verify", BOMB)
    assert refused.returncode == 1 and "NEXUS_BACKUP_MAX_EXPANSION_RATIO" in refused.stdout
    allowed = nexus_cli({**env, "NEXUS_BACKUP_MAX_EXPANSION_RATIO": "1000000"}, "backup", "verify")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    bad = nexus_cli({**env, "NEXUS_BACKUP_MAX_EXPANSION_RATIO": "0.5"}, "backup", "list")
    assert bad.returncode == 2 and "NEXUS_BACKUP_MAX_EXPANSION_RATIO='0.5'" in bad.stderr


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Mount]:
    """Mount a tmpfs with the given options under ``tmp_path`` (skips where one cannot)."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small filesystem needs root")
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_target_without_the_room_is_refused_before_anything_is_written(
    tmp_path: Path, small_fs: Mount
) -> None:
    disk = small_fs("size=4m")
    repo = BackupRepository(tmp_path / "backups")
    write_backup(repo, "20000101T000000Z-big", [member("data/big", os.urandom(6 << 20))])
    with pytest.raises(BackupError, match=r"needs 6\.0 MiB on the filesystem of .*4\.0 MiB free"):
        restore_to_folder(repo, "20000101T000000Z-big", disk / "out")
    assert list(disk.iterdir()) == []


def test_a_disk_that_fills_up_while_extracting_leaves_nothing_behind(
    tmp_path: Path, small_fs: Mount
) -> None:
    # Room for the bytes but not for the files (inodes): the free-space check passes
    # and the filesystem itself says ENOSPC halfway through.
    disk = small_fs("size=16m,nr_inodes=24")
    locations = OpenCodeLocations(disk / "config" / "opencode", disk / "data" / "opencode")
    locations.data_dir.mkdir(parents=True)
    (locations.data_dir / "mine.txt").write_text("the live data")
    before, free_inodes = tree_digest(disk), os.statvfs(disk).f_ffree
    repo = BackupRepository(tmp_path / "backups")
    many = [member("data", kind=tarfile.DIRTYPE)]
    many += [member(f"data/f{i:02d}.txt", b"x" * 100) for i in range(40)]
    write_backup(repo, "20000101T000000Z-many", many)
    with pytest.raises(BackupError, match="No space left on device") as live:
        restore_live(repo, "20000101T000000Z-many", locations, NoServer(), parts=["data"])
    assert "what this restore wrote is removed" in str(live.value)
    assert "df" in (live.value.hint or "")
    assert tree_digest(disk) == before  # the live data as it was, no staged folder left
    with pytest.raises(BackupError, match="No space left on device"):
        restore_to_folder(repo, "20000101T000000Z-many", disk / "out")
    assert tree_digest(disk) == before and not (disk / "out").exists()
    assert os.statvfs(disk).f_ffree == free_inodes
