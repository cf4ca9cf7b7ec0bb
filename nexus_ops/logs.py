"""The server's log file: rotation by size and count, and reading its tail.

The server writes to the file itself (opened O_APPEND), so it keeps logging when
the agent is gone. Rotation therefore copies the file to ``.1`` and truncates it
in place (logrotate's copytruncate): the writer's next append lands at the start
of the emptied file.

A reader that follows the file keeps the byte offset where its last read ended
(:class:`LogChunk`) and asks for what lies past it; a file shorter than that
offset was rotated, and is read again from its start.
"""

from __future__ import annotations

import contextlib
import shutil
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple


class LogChunk(NamedTuple):
    """Lines read from a log, and the byte offset just past the last one read."""

    lines: list[str]
    offset: int


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
    return tail_chunk(path, lines, contains).lines


def tail_chunk(path: Path, lines: int = 200, contains: str | None = None) -> LogChunk:
    """The last ``lines`` lines of ``path``, and the offset where the file ended."""
    kept: deque[str] = deque(maxlen=max(lines, 0))
    offset = 0
    with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
        for line, _ in _lines_from(handle, 0):
            if _matches(line, contains):
                kept.append(line)
        offset = handle.tell()
    return LogChunk(list(kept), offset)


def read_after(path: Path, offset: int, limit: int, contains: str | None = None) -> LogChunk:
    """The first ``limit`` lines written past ``offset`` (from the start if rotated since)."""
    found: list[str] = []
    end = offset
    with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
        start = offset if offset <= handle.seek(0, 2) else 0
        end = start
        for line, position in _lines_from(handle, start):
            end = position
            if _matches(line, contains):
                found.append(line)
                if len(found) >= limit:
                    break
    return LogChunk(found, end)


def _lines_from(handle: BinaryIO, start: int) -> Iterator[tuple[str, int]]:
    """Each line from byte ``start`` on, with the offset just past it."""
    handle.seek(start)
    position = start
    for raw in handle:
        position += len(raw)
        yield raw.decode("utf-8", errors="replace").rstrip("\n"), position


def _matches(line: str, contains: str | None) -> bool:
    return contains is None or contains.lower() in line.lower()
