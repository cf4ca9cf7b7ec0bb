"""Reading the server's log: the tail, and following it past an offset."""

from __future__ import annotations

from pathlib import Path

from nexus_ops.logs import read_after, rotate_if_needed, tail_chunk


def test_following_reads_each_line_once_and_starts_over_after_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "opencode.log"
    log.write_text("one\ntwo\nthree\n")
    first = tail_chunk(log, 2)
    assert first.lines == ["two", "three"]
    with log.open("a") as out:
        out.write("four\nfive\n")
    assert read_after(log, first.offset, 1).lines == ["four"]
    second = read_after(log, first.offset, 10)
    assert second.lines == ["four", "five"]
    assert read_after(log, second.offset, 10).lines == []
    assert rotate_if_needed(log, max_bytes=1, backups=2)
    log.write_text("six\n")
    assert read_after(log, second.offset, 10).lines == ["six"]


def test_a_missing_log_reads_as_empty(tmp_path: Path) -> None:
    assert read_after(tmp_path / "none.log", 7, 10) == ([], 7)
    assert tail_chunk(tmp_path / "none.log") == ([], 0)
