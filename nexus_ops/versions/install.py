"""Installing one OpenCode version beside the others, whole or not at all.

npm installs ``opencode-ai@<version>`` into a staging folder beside the versions
(``NEXUS_HOME/opencode/.staging-<version>-<pid>``); only once the native binary is
there and ``--version`` answers the version asked for is the folder renamed to
``<version>``. A failed, interrupted or killed install leaves no version behind: the
staging folder is removed at once, or (after a kill -9 of nexus-ops itself) by the
next install, and a listing never shows it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from nexus_ops.errors import DiskFull, InstallError
from nexus_ops.opencode import NPM_PACKAGE, binary_version, native_binary_in, native_package_names
from nexus_ops.paths import fsync_dir
from nexus_ops.process import pid_alive

Progress = Callable[[str], None]
STAGING = ".staging-"
# An install takes about 360 MiB (two builds of the native binary); refused below this much free space.
NEEDED_BYTES = 512 * 2**20
NPM_TIMEOUT = 900.0
# Less free than this when npm fails: it failed for want of space, whatever it printed.
FULL_BYTES = 16 * 2**20
_VERSION = re.compile(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?")


def check_version(version: str) -> str:
    """``version`` if it names one exact release (``1.18.33``); else a clear error.

    >>> check_version("1.18.33")
    '1.18.33'
    """
    if not _VERSION.fullmatch(version):
        raise InstallError(
            f"VERSION {version!r} is not an exact OpenCode version",
            hint="give one like 1.18.33 (see `npm view opencode-ai versions`); ranges and "
            "tags such as latest are not installed side by side",
        )
    return version


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (each hard-linked file counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            info = path.lstat()
            if path.is_file() and not path.is_symlink() and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def remove_stale_staging(root: Path) -> list[Path]:
    """Remove staging folders whose install is no longer running (killed, power cut)."""
    removed = []
    for folder in root.glob(f"{STAGING}*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and pid_alive(int(pid)) and int(pid) != os.getpid():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def check_free_space(root: Path, needed: int = NEEDED_BYTES) -> None:
    free = shutil.disk_usage(root).free
    if free < needed:
        raise disk_full(
            root, f"only {free // 2**20} MiB free, an install needs about {needed // 2**20} MiB"
        )


def disk_full(root: Path, detail: str) -> DiskFull:
    return DiskFull(
        f"no space left to install OpenCode in {root}: {detail}; nothing was installed "
        "and the running server is untouched",
        hint=f"free space on the disk of {root} (remove old versions, backups or rotated "
        "logs), or point NEXUS_HOME at a larger disk, then install again",
    )


def install_version(
    version: str,
    root: Path,
    progress: Progress,
    *,
    needed: int = NEEDED_BYTES,
    poll: float = 2.0,
) -> Path:
    """Install ``opencode-ai@version`` as ``root/<version>``; return that folder."""
    check_version(version)
    target = root / version
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError(
            "npm is not installed",
            hint="install Node.js and npm (e.g. `apt-get install nodejs npm`), or set "
            "NEXUS_OPENCODE_BIN to an OpenCode binary you installed yourself",
        )
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(root)
    check_free_space(root, needed)
    staging = root / f"{STAGING}{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    started = time.monotonic()
    progress(
        f"installing {NPM_PACKAGE}@{version} into {target} (npm: the native binary, about 360 MiB) ..."
    )
    try:
        staging.mkdir()
        _run_npm(npm, version, staging, progress, poll)
        progress("checking the installed binary ...")
        _check_binary(version, staging)
        staging.rename(target)
        fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise disk_full(root, str(exc)) from exc
        raise InstallError(
            f"installing {NPM_PACKAGE}@{version} into {root} failed: {exc}",
            hint="check that the folder is writable, then install again",
        ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = folder_size(target)
    progress(
        f"done: {version} in {target}, {size / 2**20:.0f} MiB, {time.monotonic() - started:.1f} s"
    )
    return target


def _run_npm(npm: str, version: str, staging: Path, progress: Progress, poll: float) -> None:
    argv = [
        npm,
        "install",
        "--prefix",
        str(staging),
        "--no-audit",
        "--no-fund",
        "--loglevel=warn",  # warn: npm reports a full disk (ENOSPC) only as a warning
        f"{NPM_PACKAGE}@{version}",
    ]
    log = staging / ".npm-output"
    with log.open("w+b") as output:
        # Its own process group: an interrupt or a failure ends npm and its children.
        child = subprocess.Popen(
            argv, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = _wait(child, staging, progress, poll)
        finally:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        output.seek(0)
        text = output.read().decode(errors="replace").strip()
    log.unlink()
    if code == 0:
        return
    full = shutil.disk_usage(staging).free < FULL_BYTES  # measured before the clean-up
    if full or "ENOSPC" in text or "no space left" in text.lower():
        raise disk_full(staging.parent, "npm ran out of space (ENOSPC)")
    how = f"was killed by signal {-code}" if code < 0 else f"failed (exit {code})"
    raise InstallError(
        f"npm install {NPM_PACKAGE}@{version} {how}; nothing was installed: {_last_lines(text)}",
        hint="check the version (`npm view opencode-ai versions`) and the network, "
        "then install again",
    )


def _wait(child: subprocess.Popen[bytes], staging: Path, progress: Progress, poll: float) -> int:
    deadline = time.monotonic() + NPM_TIMEOUT
    shown = 0
    while True:
        try:
            return child.wait(timeout=poll)
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            raise InstallError(
                f"npm install took longer than {NPM_TIMEOUT:.0f} s and was stopped",
                hint="check the network and the npm registry, then install again",
            )
        mib = folder_size(staging) // 2**20
        if mib >= shown + 10:
            shown = mib
            progress(f"  {mib} MiB so far ...")


def _check_binary(version: str, staging: Path) -> None:
    binary = native_binary_in(staging / "node_modules")
    if binary is None:
        raise InstallError(
            f"{NPM_PACKAGE}@{version} installed, but it holds no binary for this machine "
            f"(looked for {', '.join(native_package_names())}); nothing was installed",
            hint="check that this version is published for this platform "
            "(`npm view opencode-linux-x64 versions`)",
        )
    found = binary_version(binary)
    if found != version:
        raise InstallError(
            f"the binary npm installed for {version} answers --version with {found!r}; "
            "nothing was installed",
            hint="check the npm registry (a mirror may serve another build), then install again",
        )


def _last_lines(text: str, count: int = 6) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:])[-800:] or "no output"
