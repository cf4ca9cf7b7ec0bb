"""OpenCode versions side by side: listing, the active one, pruning, and installs that
leave no half version (npm stood in by a script of the test's own where the fault is
npm's; the binary is always the real one)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import (
    RunningAgent,
    kill_everything_of,
    nexus_cli,
    private_env,
    start_agent,
    wait_for,
)
from versions_helpers import cached_node_modules, lay_out, with_path, write_npm

from nexus_ops.errors import DiskFull
from nexus_ops.models import ServerState
from nexus_ops.store import Database
from nexus_ops.store.versions import VersionStore
from nexus_ops.versions import Versions
from nexus_ops.versions.install import STAGING, install_version, remove_stale_staging

# An npm that installs the real 1.18.33 (hard links) whatever version it is asked for.
LINKING_NPM = 'mkdir -p "$PREFIX" && cp -al {cache} "$PREFIX/node_modules"'
# An npm that has begun (a file in place) and then hangs.
HANGING_NPM = 'mkdir -p "$PREFIX/node_modules" && echo part > "$PREFIX/node_modules/part"; sleep 60'


def env_of(tmp_path: Path, **extra: str) -> dict[str, str]:
    return private_env(tmp_path, extra)


def versions_json(env: dict[str, str]) -> dict[str, object]:
    done = nexus_cli(env, "opencode", "versions", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def listed(env: dict[str, str]) -> list[str]:
    rows = versions_json(env)["versions"]
    assert isinstance(rows, list)
    return [row["version"] for row in rows]


def root_of(env: dict[str, str]) -> Path:
    return Path(env["NEXUS_HOME"]) / "opencode"


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_existing_single_version_install_is_read_as_the_active_version(
    tmp_path: Path, opencode_bin: Path
) -> None:
    env = env_of(tmp_path)
    binary = lay_out(opencode_bin, root_of(env))  # what `opencode install` used to make
    shown = versions_json(env)
    assert shown["active"] == "1.18.33"
    assert shown["runs"] == str(binary)
    [row] = shown["versions"]  # type: ignore[misc]
    assert row["legacy_layout"] is True and row["size"] > 100 * 2**20
    path = nexus_cli(env, "opencode", "path")
    assert path.stdout.startswith(str(binary)), path.stdout


def test_use_makes_an_installed_version_active_and_says_a_restart_applies_it(
    tmp_path: Path, opencode_bin: Path
) -> None:
    env = env_of(tmp_path)
    root = root_of(env)
    lay_out(opencode_bin, root)
    other = lay_out(opencode_bin, root / "1.18.31")
    assert listed(env) == ["1.18.33", "1.18.31"]

    done = nexus_cli(env, "opencode", "use", "1.18.31")
    assert done.returncode == 0, done.stderr
    assert "1.18.31 is the active version (was 1.18.33)" in done.stdout
    assert "restart" in done.stdout
    shown = versions_json(env)
    assert shown["active"] == "1.18.31" and shown["runs"] == str(other)
    assert nexus_cli(env, "opencode", "path").stdout.startswith(str(other))

    missing = nexus_cli(env, "opencode", "use", "1.18.20")
    assert missing.returncode == 1
    assert "1.18.20 is not installed" in missing.stderr
    assert "nexus-ops opencode install 1.18.20" in missing.stderr
    bad = nexus_cli(env, "opencode", "use", "latest")
    assert bad.returncode == 1 and "VERSION 'latest' is not an exact" in bad.stderr


def test_nexus_opencode_bin_still_wins_and_the_listing_says_so(
    tmp_path: Path, opencode_bin: Path
) -> None:
    env = env_of(tmp_path, NEXUS_OPENCODE_BIN=str(opencode_bin))
    lay_out(opencode_bin, root_of(env) / "1.18.31")
    text = nexus_cli(env, "opencode", "versions")
    assert "1.18.31" in text.stdout
    assert f"NEXUS_OPENCODE_BIN is set: the server runs {opencode_bin}" in text.stdout
    shown = versions_json(env)
    assert shown["override"] == str(opencode_bin) and shown["runs"] == str(opencode_bin)


def test_keep_versions_setting_is_validated(tmp_path: Path) -> None:
    env = env_of(tmp_path, NEXUS_OPENCODE_KEEP_VERSIONS="0")
    done = nexus_cli(env, "opencode", "versions")
    assert done.returncode == 2
    assert "NEXUS_OPENCODE_KEEP_VERSIONS" in done.stderr


def test_prune_keeps_the_newest_and_never_the_active_or_the_one_before(
    tmp_path: Path, opencode_bin: Path
) -> None:
    root = tmp_path / "opencode"
    store = VersionStore(Database(tmp_path / "nexus.db"))
    versions = Versions(root, store)
    names = ["1.18.1", "1.18.2", "1.18.3", "1.18.4", "1.18.5"]
    for when, name in enumerate(names, start=1):
        lay_out(opencode_bin, root / name)
        store.record_installed(name, when=float(when))
    versions.use("1.18.1")
    versions.use("1.18.2")  # active; 1.18.1 is the one before it

    assert versions.prune(3) == ["1.18.4", "1.18.3"]
    assert sorted(versions.folders()) == ["1.18.1", "1.18.2", "1.18.5"]
    assert versions.prune(1) == ["1.18.5"]
    assert sorted(versions.folders()) == ["1.18.1", "1.18.2"]
    assert sorted(store.records()) == ["1.18.1", "1.18.2"]
    assert leftovers(root) == ["1.18.1", "1.18.2"]


def test_first_install_shows_progress_becomes_active_and_a_second_does_not(
    tmp_path: Path, opencode_bin: Path
) -> None:
    npm_dir = tmp_path / "npm-bin"
    write_npm(npm_dir, LINKING_NPM.format(cache=cached_node_modules(opencode_bin)))
    env = with_path(env_of(tmp_path), npm_dir)
    done = nexus_cli(env, "opencode", "install", "1.18.33")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("installing opencode-ai@1.18.33 into ")
    assert any(line.startswith("done: 1.18.33 in ") and " MiB, " in line for line in lines)
    assert "1.18.33 is now the active version" in done.stderr
    assert versions_json(env)["active"] == "1.18.33"
    assert leftovers(root_of(env)) == ["1.18.33"]


def test_a_binary_that_answers_another_version_is_refused_and_leaves_nothing(
    tmp_path: Path, opencode_bin: Path
) -> None:
    npm_dir = tmp_path / "npm-bin"
    write_npm(npm_dir, LINKING_NPM.format(cache=cached_node_modules(opencode_bin)))
    env = with_path(env_of(tmp_path), npm_dir)
    done = nexus_cli(env, "opencode", "install", "1.18.32")
    assert done.returncode == 1
    assert "answers --version with '1.18.33'; nothing was installed" in done.stderr
    assert leftovers(root_of(env)) == []


def test_full_disk_from_npm_gives_a_clear_error_and_leaves_nothing(
    tmp_path: Path, opencode_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A unit test: npm fills the folder, then fails as it does on a full disk.
    npm_dir = tmp_path / "npm-bin"
    write_npm(
        npm_dir,
        'mkdir -p "$PREFIX/node_modules" && head -c 1048576 /dev/zero > "$PREFIX/node_modules/x"\n'
        'echo "npm error code ENOSPC" >&2; echo "npm error syscall write" >&2; exit 228',
    )
    monkeypatch.setenv("PATH", f"{npm_dir}:{sys.exec_prefix}/bin:/usr/bin:/bin")
    root = tmp_path / "opencode"
    active = lay_out(opencode_bin, root / "1.18.33")
    with pytest.raises(DiskFull) as caught:
        install_version("1.18.32", root, lambda line: None)
    assert f"no space left to install OpenCode in {root}" in caught.value.message
    assert "running server is untouched" in caught.value.message
    assert caught.value.hint and "free space on the disk of" in caught.value.hint
    assert leftovers(root) == ["1.18.33"] and active.is_file()
    # Too little free space is refused before npm runs at all.
    with pytest.raises(DiskFull, match="MiB free, an install needs about"):
        install_version("1.18.32", root, lambda line: None, needed=2**62)


def test_ctrl_c_stops_npm_and_leaves_no_half_version(tmp_path: Path) -> None:
    npm_dir = tmp_path / "npm-bin"
    write_npm(npm_dir, HANGING_NPM)
    env = with_path(env_of(tmp_path), npm_dir)
    root = root_of(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_ops", "opencode", "install", "1.18.32"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    staging = wait_for(lambda: next(root.glob(f"{STAGING}*/node_modules/part"), None), 30)
    npm = [c for c in psutil.Process(proc.pid).children(recursive=True) if "npm" in c.cmdline()[1]]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    assert not staging.exists() and leftovers(root) == []
    assert npm and not any(p.is_running() and p.status() != "zombie" for p in npm)


def test_kill_9_of_an_install_leaves_nothing_listed_and_the_next_one_cleans_up(
    tmp_path: Path, opencode_bin: Path
) -> None:
    npm_dir = tmp_path / "npm-bin"
    # npm has laid out every file, binary included, but has not finished.
    write_npm(npm_dir, LINKING_NPM.format(cache=cached_node_modules(opencode_bin)) + "; sleep 60")
    env = with_path(env_of(tmp_path), npm_dir)
    root = root_of(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_ops", "opencode", "install", "1.18.32"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(lambda: next(root.glob(f"{STAGING}*/node_modules/opencode-ai"), None), 30)
    orphans = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait(timeout=10)
    for orphan in orphans:
        orphan.kill()
    assert listed(env) == []
    [stale] = root.glob(f"{STAGING}*")
    assert remove_stale_staging(root) == [stale] and leftovers(root) == []


@pytest.mark.opencode
def test_supervisor_runs_the_active_version_without_autoupdate_and_notes_its_use(
    tmp_path: Path, opencode_bin: Path
) -> None:
    env = env_of(tmp_path)
    binary = lay_out(opencode_bin, root_of(env) / "1.18.33")
    assert nexus_cli(env, "opencode", "use", "1.18.33").returncode == 0
    agent: RunningAgent = start_agent(env)
    try:
        result = agent.client.start()
        assert result.ok and result.status.state is ServerState.RUNNING, result.message
        server = psutil.Process(result.status.pid)
        assert server.exe() == str(binary)
        assert server.environ().get("OPENCODE_DISABLE_AUTOUPDATE") == "true"
        [row] = versions_json(env)["versions"]  # type: ignore[misc]
        assert row["last_used"] is not None and row["last_used"] <= time.time()
    finally:
        with contextlib.suppress(Exception):  # a failed stop must not leave the agent
            agent.client.stop()
        agent.client.close()
        agent.stop()
        kill_everything_of(env)
