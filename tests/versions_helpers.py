"""Shared pieces of the version tests: versions laid out from the real 1.18.33 install
(hard links, no download), and an npm of the test's own for the fault cases."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from nexus_ops.opencode import native_binary_in


def cached_node_modules(opencode_bin: Path) -> Path:
    """The ``node_modules`` folder that holds the real binary the tests run."""
    return next(p for p in opencode_bin.parents if p.name == "node_modules")


def lay_out(opencode_bin: Path, folder: Path) -> Path:
    """``folder/node_modules`` as npm installs it (hard links to the real 1.18.33);
    returns the native binary in it."""
    return lay_out_modules(cached_node_modules(opencode_bin), folder)


def lay_out_modules(node_modules: Path, folder: Path) -> Path:
    """``folder/node_modules`` as hard links to an installed ``node_modules``; returns
    the native binary in it."""
    shutil.copytree(node_modules, folder / "node_modules", copy_function=os.link, symlinks=True)
    binary = native_binary_in(folder / "node_modules")
    assert binary is not None
    return binary


def write_npm(folder: Path, body: str) -> Path:
    """An ``npm`` in ``folder`` (put it first on PATH) running the shell ``body``;
    ``$PREFIX`` is the folder it was asked to install into."""
    folder.mkdir(parents=True, exist_ok=True)
    npm = folder / "npm"
    npm.write_text(
        "#!/bin/sh\n"
        'while [ "$#" -gt 0 ]; do [ "$1" = --prefix ] && PREFIX="$2"; shift; done\n'
        f"{body}\n",
        encoding="utf-8",
    )
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)
    return npm


def with_path(env: dict[str, str], folder: Path) -> dict[str, str]:
    return {**env, "PATH": f"{folder}{os.pathsep}{env.get('PATH', '')}"}
