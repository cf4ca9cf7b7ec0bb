"""Real installs from the npm registry: an older OpenCode beside an existing one, and
the faults a real npm meets (a version it cannot install, a kill -9 half-way, a full disk)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import nexus_cli, private_env, wait_for
from versions_helpers import lay_out

from nexus_ops.errors import DiskFull
from nexus_ops.opencode import binary_version
from nexus_ops.versions.install import STAGING, folder_size, install_version

pytestmark = pytest.mark.npm

OLDER = "1.17.19"  # an older line, published for linux-x64
UNPUBLISHED_NATIVE = "1.17.20"  # opencode-ai has it, its native package does not


@pytest.fixture(scope="module")
def npm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One npm cache for the module: the older version is downloaded once."""
    return tmp_path_factory.mktemp("npm-cache")


def env_for(tmp_path: Path, cache: Path) -> dict[str, str]:
    return private_env(tmp_path, {"npm_config_cache": str(cache)})


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_an_older_version_installs_beside_the_existing_one_and_can_be_used(
    tmp_path: Path, opencode_bin: Path, npm_cache: Path
) -> None:
    env = env_for(tmp_path, npm_cache)
    root = Path(env["NEXUS_HOME"]) / "opencode"
    lay_out(opencode_bin, root)  # the single-version layout of earlier releases
    done = nexus_cli(env, "opencode", "install", OLDER, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"installing opencode-ai@{OLDER} into {root / OLDER}" in done.stderr
    assert f"done: {OLDER} in {root / OLDER}, " in done.stderr
    assert "now the active version" not in done.stderr  # installed, not activated
    shown = json.loads(nexus_cli(env, "opencode", "versions", "--json").stdout)
    assert [(r["version"], r["active"]) for r in shown["versions"]] == [
        ("1.18.33", True),
        (OLDER, False),
    ]
    assert leftovers(root).count(OLDER) == 1 and not any(
        name.startswith(STAGING) for name in leftovers(root)
    )
    again = nexus_cli(env, "opencode", "install", OLDER, "--activate")
    assert f"{OLDER} is already installed" in again.stderr
    assert f"{OLDER} is now the active version" in again.stderr
    shown = json.loads(nexus_cli(env, "opencode", "versions", "--json").stdout)
    assert shown["active"] == OLDER
    assert binary_version(Path(shown["runs"])) == OLDER
    back = nexus_cli(env, "opencode", "use", "1.18.33")
    assert "1.18.33 is the active version (was 1.17.19)" in back.stdout, back.stderr


def test_a_version_npm_cannot_install_fails_clearly_and_leaves_nothing(
    tmp_path: Path, npm_cache: Path
) -> None:
    env = env_for(tmp_path, npm_cache)
    done = nexus_cli(env, "opencode", "install", UNPUBLISHED_NATIVE, timeout=600)
    assert done.returncode == 1
    assert f"npm install opencode-ai@{UNPUBLISHED_NATIVE} failed" in done.stderr
    assert "nothing was installed" in done.stderr and "hint:" in done.stderr
    assert leftovers(Path(env["NEXUS_HOME"]) / "opencode") == []


def test_npm_killed_half_way_leaves_no_half_version(tmp_path: Path, npm_cache: Path) -> None:
    env = env_for(tmp_path, npm_cache)
    root = Path(env["NEXUS_HOME"]) / "opencode"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_ops", "opencode", "install", OLDER],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def npm_at_work() -> psutil.Process | None:
        staging = next(root.glob(f"{STAGING}*"), None)
        if staging is None or folder_size(staging) < 2**20:
            return None
        return next(
            (c for c in psutil.Process(proc.pid).children() if "npm" in " ".join(c.cmdline())),
            None,
        )

    npm = wait_for(npm_at_work, 120, interval=0.02, what="npm to be half-way")
    npm.kill()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "was killed by signal 9; nothing was installed" in err
    assert leftovers(root) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB filesystem of its own (tmpfs), too small for OpenCode."""
    mount = tmp_path / "small"
    mount.mkdir()
    tried = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {tried.stderr.strip()}")
    try:
        yield mount
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(mount / "opencode")
        subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_disk_gives_a_clear_error_and_leaves_nothing(
    small_disk: Path, npm_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("npm_config_cache", str(npm_cache))
    root = small_disk / "opencode"
    with pytest.raises(DiskFull) as caught:
        install_version(OLDER, root, lambda line: None, needed=0)  # npm meets the full disk
    assert f"no space left to install OpenCode in {root}" in caught.value.message
    assert leftovers(root) == []
    assert shutil.disk_usage(small_disk).used < 2**20  # all of it given back
    with pytest.raises(DiskFull, match=r"only \d+ MiB free, an install needs about 512 MiB"):
        install_version(OLDER, root, lambda line: None)  # refused before npm runs
