"""OpenCode versions side by side under ``NEXUS_HOME/opencode``: install, list, use."""

from __future__ import annotations

from nexus_ops.versions.catalog import (
    InstalledVersion,
    Selection,
    Versions,
    open_versions,
    selected_binary,
    version_key,
)
from nexus_ops.versions.install import check_version, install_version

__all__ = [
    "InstalledVersion",
    "Selection",
    "Versions",
    "check_version",
    "install_version",
    "open_versions",
    "selected_binary",
    "version_key",
]
