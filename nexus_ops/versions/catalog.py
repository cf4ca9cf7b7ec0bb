"""The OpenCode versions installed side by side, the active one, and which binary runs.

Each version lives in ``NEXUS_HOME/opencode/<version>/`` (npm's ``--prefix``); the
agent's database says which is active, which was active before it, and when each
was installed and last used. An install of the older single-version layout
(``NEXUS_HOME/opencode/node_modules``) is read where it is, as the version its
binary reports, and is active until another version is made active.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from nexus_ops.config import Settings
from nexus_ops.errors import InstallError
from nexus_ops.opencode import binary_version, locate_binary, native_binary_in
from nexus_ops.paths import Layout
from nexus_ops.store.db import Database
from nexus_ops.store.versions import VersionStore
from nexus_ops.versions.install import (
    STAGING,
    Progress,
    check_version,
    folder_size,
    install_version,
)

OVERRIDE = "NEXUS_OPENCODE_BIN"


@dataclass(frozen=True)
class InstalledVersion:
    """One version on disk, with what the database knows of it."""

    version: str
    folder: Path
    binary: Path
    active: bool
    installed: float
    last_used: float | None
    size: int
    legacy: bool

    def as_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "active": self.active,
            "installed": self.installed,
            "last_used": self.last_used,
            "size": self.size,
            "folder": str(self.folder),
            "binary": str(self.binary),
            "legacy_layout": self.legacy,
        }


@dataclass(frozen=True)
class Selection:
    """The binary the supervisor starts, and why that one."""

    binary: Path
    source: str
    version: str | None = None


def version_key(version: str) -> tuple[int, ...]:
    """Sort key of a version: ``1.18.9`` before ``1.18.33``.

    >>> sorted(["1.18.33", "1.18.9", "1.17.19"], key=version_key)
    ['1.17.19', '1.18.9', '1.18.33']
    """
    head = version.split("-", 1)[0]
    return tuple(int(part) if part.isdigit() else -1 for part in head.split("."))


class Versions:
    """The versions under ``root`` (``NEXUS_HOME/opencode``) and the active one."""

    def __init__(self, root: Path, store: VersionStore) -> None:
        self.root = root
        self.store = store
        self._legacy_seen: tuple[Path, float, str] | None = None

    # ---- what is there ---------------------------------------------------------------

    def folders(self) -> dict[str, Path]:
        """Installed versions (side-by-side layout and the older one) -> their folder."""
        found: dict[str, Path] = {}
        legacy = self.legacy_version()
        if legacy is not None:
            found[legacy] = self.root
        if self.root.is_dir():
            for folder in self.root.iterdir():
                if folder.name.startswith((".", STAGING)) or not folder.is_dir():
                    continue
                if native_binary_in(folder / "node_modules") is not None:
                    found[folder.name] = folder
        return found

    def legacy_version(self) -> str | None:
        """The version of the single-version install in ``root/node_modules``, if any."""
        binary = native_binary_in(self.root / "node_modules")
        if binary is None:
            return None
        stamp = binary.stat().st_mtime
        if self._legacy_seen is None or self._legacy_seen[:2] != (binary, stamp):
            self._legacy_seen = (binary, stamp, binary_version(binary))
        return self._legacy_seen[2]

    def binary_of(self, version: str) -> Path | None:
        folder = self.folders().get(version)
        return None if folder is None else native_binary_in(folder / "node_modules")

    def active(self) -> str | None:
        """The active version: the recorded one if installed, else the older layout's."""
        folders = self.folders()
        recorded = self.store.active()
        if recorded is not None and recorded in folders:
            return recorded
        legacy = self.legacy_version()
        return legacy if legacy is not None else None

    def listing(self) -> list[InstalledVersion]:
        """Every installed version, newest first."""
        records = self.store.records()
        active = self.active()
        rows = []
        for version, folder in self.folders().items():
            binary = native_binary_in(folder / "node_modules")
            if binary is None:
                continue
            record = records.get(version)
            legacy = folder == self.root
            rows.append(
                InstalledVersion(
                    version=version,
                    folder=folder,
                    binary=binary,
                    active=version == active,
                    installed=record.installed if record else binary.stat().st_mtime,
                    last_used=record.last_used if record else None,
                    size=folder_size(folder / "node_modules") if legacy else folder_size(folder),
                    legacy=legacy,
                )
            )
        return sorted(rows, key=lambda row: version_key(row.version), reverse=True)

    # ---- changing it -----------------------------------------------------------------

    def install(
        self, version: str, progress: Progress, *, activate: bool = False, keep: int = 3
    ) -> Path:
        """Install ``version`` (when not there yet); activate it when asked or when no
        version is active; then prune to ``keep``. Returns its binary."""
        check_version(version)
        binary = self.binary_of(version)
        if binary is None:
            install_version(version, self.root, progress)
            self.store.record_installed(version)
            binary = native_binary_in(self.root / version / "node_modules")
            assert binary is not None  # install_version checked it
        else:
            progress(f"{version} is already installed in {binary.parents[3]}")
        if activate or self.active() is None:
            self.use(version)
            progress(f"{version} is now the active version")
        for gone in self.prune(keep):
            progress(f"removed {gone} (NEXUS_OPENCODE_KEEP_VERSIONS={keep})")
        return binary

    def use(self, version: str) -> str | None:
        """Make the installed ``version`` active; return the version active before."""
        check_version(version)
        folders = self.folders()
        if version not in folders:
            have = ", ".join(sorted(folders, key=version_key)) or "none"
            raise InstallError(
                f"OpenCode {version} is not installed (installed: {have})",
                hint=f"install it first: `nexus-ops opencode install {version}`",
            )
        before = self.active()
        if self.store.active() is None and before is not None:
            self.store.activate(before)  # the older layout's version, so it is kept
        self.store.activate(version)
        return before

    def prune(self, keep: int) -> list[str]:
        """Remove versions past the newest ``keep`` installed (never the active one, the
        one before it, or an install of the older layout); return what was removed."""
        records = self.store.records()
        protected = {self.active(), self.store.previous()}
        managed = [v for v, folder in self.folders().items() if folder != self.root]
        managed.sort(key=lambda v: records[v].installed if v in records else 0.0, reverse=True)
        kept = len([v for v in managed if v in protected])
        removed = []
        for version in managed:
            if version in protected:
                continue
            if kept < keep:
                kept += 1
                continue
            self._remove(version)
            removed.append(version)
        return removed

    def _remove(self, version: str) -> None:
        # Renamed first, so that a half-removed folder is never listed as a version.
        aside = self.root / f"{STAGING}removed-{version}-{os.getpid()}"
        (self.root / version).rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
        self.store.forget(version)

    # ---- what runs -------------------------------------------------------------------

    def select(self, settings: Settings) -> Selection:
        """The binary to start: NEXUS_OPENCODE_BIN when set, else the active version's,
        else ``opencode`` on PATH."""
        if settings.opencode_bin is not None:
            return Selection(locate_binary(settings.opencode_bin, self.root), OVERRIDE)
        active = self.active()
        if active is not None:
            binary = self.binary_of(active)
            if binary is not None:
                return Selection(binary, f"active version {active}", active)
        return Selection(locate_binary(None, self.root), "PATH")


def open_versions(settings: Settings, *, create: bool = False) -> tuple[Versions, Database]:
    """The versions of ``settings``' NEXUS_HOME, and the database to close after.

    Only to look (``create=False``) without a nexus.db yet, nothing is recorded: an
    empty store in memory, so that a look creates no files."""
    layout = Layout(settings.home)
    if create:
        layout.ensure()
    found = create or layout.database.exists()
    database = Database(layout.database if found else Path(":memory:"))
    return Versions(layout.opencode_prefix, VersionStore(database)), database


def selected_binary(settings: Settings) -> Selection:
    """What the supervisor of ``settings`` starts (for commands and checks outside it)."""
    if settings.opencode_bin is not None:
        return Selection(locate_binary(settings.opencode_bin, Path()), OVERRIDE)
    versions, database = open_versions(settings)
    try:
        return versions.select(settings)
    finally:
        database.close()
