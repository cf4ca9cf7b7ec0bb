"""What the npm registry offers of OpenCode: the newest version, and whether one exists.

>>> # newest_version() -> '1.18.33'  (``npm view opencode-ai version``)
"""

from __future__ import annotations

import shutil
import subprocess

from nexus_ops.errors import InstallError
from nexus_ops.opencode import NPM_PACKAGE

NPM_VIEW_TIMEOUT = 60.0


def _npm_view(spec: str) -> str | None:
    """What ``npm view SPEC version`` prints; None when the registry has no such package
    or version (E404)."""
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError(
            "npm is not installed, so the registry cannot be asked for OpenCode's versions",
            hint="install Node.js and npm, or give an installed VERSION "
            "(`nexus-ops opencode versions`)",
        )
    try:
        done = subprocess.run(
            [npm, "view", spec, "version"],
            capture_output=True,
            text=True,
            timeout=NPM_VIEW_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InstallError(
            f"`npm view {spec} version` did not answer within {NPM_VIEW_TIMEOUT:g} s",
            hint="check the network and the npm registry, then try again",
        ) from exc
    if done.returncode != 0 and "E404" in done.stderr:
        return None
    if done.returncode != 0:
        last = next(
            (
                line
                for line in done.stderr.splitlines()
                if "npm error" in line and "log" not in line
            ),
            "no output",
        )
        raise InstallError(
            f"`npm view {spec} version` failed: {last.strip()}",
            hint="check the network and the npm registry, then try again",
        )
    return done.stdout.strip()


def newest_version() -> str:
    """The newest version of opencode-ai the registry offers."""
    found = _npm_view(NPM_PACKAGE)
    if found is None or not found:
        raise InstallError(
            f"the npm registry names no version of {NPM_PACKAGE}",
            hint="give the VERSION to upgrade to, e.g. `nexus-ops opencode upgrade 1.18.33`",
        )
    return found.splitlines()[-1]


def check_published(version: str) -> None:
    """Raise when the registry has no ``opencode-ai@version`` (naming it and what to do)."""
    if _npm_view(f"{NPM_PACKAGE}@{version}") != version:
        raise InstallError(
            f"VERSION {version!r} is not on the npm registry ({NPM_PACKAGE}@{version} "
            "does not exist)",
            hint="pick one of `npm view opencode-ai versions`, or leave VERSION out for the newest",
        )
