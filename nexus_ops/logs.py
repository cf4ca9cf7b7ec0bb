"""The server's log file: rotation by size and count, and reading its tail.

The server writes to the file itself (opened O_APPEND), so it keeps logging when
the agent is gone. Rotation therefore copies the file to ``.1`` and truncates it
in place (logrotate's copytruncate): the writer's next append lands at the start
of the emptied file.
"""

from __future__ import annotations

import contextlib
import shutil
from collections import deque
from pathlib import Path


def rotate_if_needed(path: Path, max_bytes: int, backups: int) -> bool:
    """Rotate ``path`` when it has grown past ``max_bytes``; keep ``backups`` old files."""
    try:
        if path.stat().st_size < max_bytes:
            return False
    except FileNotFoundError:
        return False
    for index in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{index + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with path.open("r+b") as handle:
        handle.truncate(0)
    return True


def tail(path: Path, lines: int = 200, contains: str | None = None) -> list[str]:
    """The last ``lines`` lines of ``path`` (optionally only those containing a text)."""
    kept: deque[str] = deque(maxlen=max(lines, 0))
    with contextlib.suppress(FileNotFoundError), path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if contains is None or contains.lower() in line.lower():
                kept.append(line.rstrip("\n"))
    return list(kept)
