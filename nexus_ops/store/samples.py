"""The sample store: metric history in SQLite, in compressed blocks, with rollups.

Like Netdata's tiers, every series is kept at three resolutions:

- ``raw``: every sample, in blocks of one series and one 15-minute window
  (timestamps delta-of-delta encoded, values XOR-ed, byte-shuffled, zlib);
- ``1m`` and ``1h``: min, max, sum and count per minute and per hour, made
  when a raw window closes, in blocks of one day and of thirty days.

New samples wait in memory and are written in batches by :meth:`SampleStore.flush`:
samples of the window still open go to the ``head`` table (one row each, so a
crash loses at most one flush interval), and a window that has closed becomes one
raw block plus its rollups, in the same transaction. A window closes when any
series gets a sample past its end. Samples must come in time order per series;
older ones are dropped and counted in :attr:`SampleStore.dropped`. Times are
kept to the millisecond.

>>> store = SampleStore(Path(":memory:"))
>>> store.append("opencode_threads", {}, 60.0, 12.0)
True
>>> store.flush()
1
>>> [s.metric for s in store.series()]
['opencode_threads']
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nexus_ops.errors import StoreError
from nexus_ops.store.codec import (
    Floats,
    Rollup,
    aggregate,
    decode_raw,
    decode_raw_many,
    decode_rollup,
    empty_rollup,
    encode_raw,
    encode_rollup,
    merge_rollups,
)
from nexus_ops.store.db import Database

RAW, MINUTE, HOUR = 0, 1, 2
RAW_WINDOW = 900.0

SCHEMA = [
    """CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        metric TEXT NOT NULL,
        labels TEXT NOT NULL,
        UNIQUE (metric, labels)
    )""",
    """CREATE TABLE blocks (
        id INTEGER PRIMARY KEY,
        series_id INTEGER NOT NULL,
        tier INTEGER NOT NULL,
        start REAL NOT NULL,
        first REAL NOT NULL,
        last REAL NOT NULL,
        count INTEGER NOT NULL,
        data BLOB NOT NULL,
        UNIQUE (series_id, tier, start)
    )""",
    "CREATE INDEX blocks_tier_last ON blocks (tier, last)",
    "CREATE TABLE head (series_id INTEGER NOT NULL, time REAL NOT NULL, value REAL NOT NULL)",
    "CREATE INDEX head_series_time ON head (series_id, time)",
]


@dataclass(frozen=True)
class Tier:
    """One resolution: its name, bucket step (0 for raw), block window and retention."""

    index: int
    name: str
    step: float
    window: float
    retention: float


@dataclass(frozen=True)
class Retention:
    """How long each tier keeps its data, in seconds (defaults: 48 h, 30 days, 1 year)."""

    raw: float = 48 * 3600.0
    minute: float = 30 * 86400.0
    hour: float = 365 * 86400.0

    def tiers(self) -> tuple[Tier, Tier, Tier]:
        return (
            Tier(RAW, "raw", 0.0, RAW_WINDOW, self.raw),
            Tier(MINUTE, "1m", 60.0, 86400.0, self.minute),
            Tier(HOUR, "1h", 3600.0, 30 * 86400.0, self.hour),
        )


@dataclass(frozen=True)
class SeriesInfo:
    """One stored series: its id, metric name and labels."""

    id: int
    metric: str
    labels: dict[str, str]


@dataclass(frozen=True)
class StoreStats:
    """Size and content of the store."""

    path: str
    size_bytes: int
    series: int
    raw_samples: int
    blocks: int
    dropped: int

    @property
    def bytes_per_raw_sample(self) -> float:
        return self.size_bytes / self.raw_samples if self.raw_samples else 0.0


@dataclass
class _Open:
    """The samples of a series' open raw window; ``saved`` of them are in ``head``."""

    start: float
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    saved: int = 0


def labels_key(labels: Mapping[str, str]) -> str:
    """The canonical text of a label set (sorted JSON)."""
    return json.dumps(
        {str(k): str(v) for k, v in labels.items()}, sort_keys=True, separators=(",", ":")
    )


def window_of(t: float) -> float:
    return math.floor(t / RAW_WINDOW) * RAW_WINDOW


class SampleStore:
    """Metric samples of one host, in ``metrics.db`` (see the module's text).

    Thread-safe: the sampler appends from one thread while queries read from
    another. ``clock`` gives "now" for retention.
    """

    def __init__(
        self,
        path: Path,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
        *,
        set_aside_damaged: bool = False,
    ) -> None:
        self.db = Database(path, set_aside_damaged=set_aside_damaged)
        self.retention = retention or Retention()
        self.tiers = self.retention.tiers()
        self.dropped = 0
        self._clock = clock
        self._lock = threading.RLock()
        self._ids: dict[tuple[str, str], int] = {}
        self._fast: dict[tuple[str, frozenset[tuple[str, str]]], int] = {}
        self._open: dict[int, _Open] = {}
        self._last: dict[int, float] = {}
        self._closed: list[tuple[int, float, Floats, Floats]] = []
        self._high = -math.inf
        self._prepare()

    # -- setup -----------------------------------------------------------------

    def _prepare(self) -> None:
        fresh = not self.db.query("SELECT 1 FROM sqlite_master WHERE name = 'series'")
        if fresh and str(self.db.path) != ":memory:":
            # Deleted blocks give their pages back to the file system.
            self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self.db.execute("VACUUM")
        self.db.migrate("samples", SCHEMA)
        for sid, metric, labels in self.db.query("SELECT id, metric, labels FROM series"):
            self._ids[(metric, labels)] = sid
        rows = self.db.query("SELECT series_id, time, value FROM head ORDER BY series_id, time")
        for sid, t, v in rows:
            buf = self._open.setdefault(sid, _Open(start=window_of(t)))
            buf.times.append(t)
            buf.values.append(v)
            buf.saved += 1
            self._last[sid] = t
            self._high = max(self._high, t)

    def close(self) -> None:
        """Write what is pending and close the database."""
        self.flush()
        self.db.close()

    # -- writing ---------------------------------------------------------------

    def series_id(self, metric: str, labels: Mapping[str, str]) -> int:
        """The id of a series, created on first use."""
        fast = (metric, frozenset(labels.items()))
        sid = self._fast.get(fast)
        if sid is not None:
            return sid
        key = (metric, labels_key(labels))
        with self._lock:
            sid = self._ids.get(key)
            if sid is None:
                self.db.execute("INSERT OR IGNORE INTO series (metric, labels) VALUES (?, ?)", key)
                rows = self.db.query("SELECT id FROM series WHERE metric = ? AND labels = ?", key)
                sid = self._ids[key] = int(rows[0][0])
            self._fast[fast] = sid
        return sid

    def append(self, metric: str, labels: Mapping[str, str], t: float, value: float) -> bool:
        """Add one sample; False (and counted as dropped) when it is out of order or NaN."""
        sid = self.series_id(metric, labels)
        with self._lock:
            return self._append(sid, round(float(t), 3), float(value))

    def append_rows(self, rows: Iterable[tuple[int, float, float]]) -> int:
        """Add samples given as (series id, time, value); returns how many were kept."""
        kept = 0
        with self._lock:
            for sid, t, value in rows:
                kept += self._append(sid, round(float(t), 3), float(value))
        return kept

    def _append(self, sid: int, t: float, value: float) -> bool:
        if t <= self._last.get(sid, -math.inf) or math.isnan(value) or math.isnan(t):
            self.dropped += 1
            return False
        start = window_of(t)
        buf = self._open.get(sid)
        if buf is not None and buf.start != start:
            self._close_window(sid, buf)
            buf = None
        if buf is None:
            buf = self._open[sid] = _Open(start=start)
        buf.times.append(t)
        buf.values.append(value)
        self._last[sid] = t
        self._high = max(self._high, t)
        return True

    def append_many(
        self,
        metric: str,
        labels: Mapping[str, str],
        times: Iterable[float],
        values: Iterable[float],
    ) -> int:
        """Add many samples of one series (sorted by time); returns how many were kept."""
        t = [round(float(x) * 1000.0) / 1000.0 for x in times]  # blocks keep milliseconds
        v = [float(x) for x in values]
        if len(t) != len(v):
            raise StoreError(f"append_many got {len(t)} times but {len(v)} values for {metric}")
        sid = self.series_id(metric, labels)
        with self._lock:
            kept_t, kept_v = array("d"), array("d")
            before = self._last.get(sid, -math.inf)
            for i, (ti, vi) in enumerate(zip(t, v, strict=True)):
                if ti > before and (i == 0 or ti > t[i - 1]) and not math.isnan(vi):
                    kept_t.append(ti)
                    kept_v.append(vi)
            self.dropped += len(t) - len(kept_t)
            if not kept_t:
                return 0
            self._append_sorted(sid, kept_t, kept_v)
            return len(kept_t)

    def _append_sorted(self, sid: int, t: Floats, v: Floats) -> None:
        lo = 0
        while lo < len(t):
            start = window_of(t[lo])
            hi = bisect_right(t, start, lo, key=window_of)
            buf = self._open.get(sid)
            if buf is not None and buf.start != start:
                self._close_window(sid, buf)
                buf = None
            if hi < len(t) and buf is None:
                # A whole window in one go: straight to the closed list.
                self._closed.append((sid, start, t[lo:hi], v[lo:hi]))
            else:
                if buf is None:
                    buf = self._open[sid] = _Open(start=start)
                buf.times.extend(t[lo:hi])
                buf.values.extend(v[lo:hi])
            lo = hi
        self._last[sid] = float(t[-1])
        self._high = max(self._high, float(t[-1]))

    def _close_window(self, sid: int, buf: _Open) -> None:
        self._closed.append((sid, buf.start, array("d", buf.times), array("d", buf.values)))
        del self._open[sid]

    def flush(self) -> int:
        """Write pending samples (head rows, closed windows as blocks and rollups)."""
        with self._lock:
            current = window_of(self._high) if self._high > -math.inf else -math.inf
            for sid, buf in list(self._open.items()):
                if buf.start < current:
                    self._close_window(sid, buf)
            rows = [
                (sid, t, v)
                for sid, buf in self._open.items()
                for t, v in zip(buf.times[buf.saved :], buf.values[buf.saved :], strict=True)
            ]
            closed, self._closed = self._closed, []
            written = len(rows) + sum(len(c[2]) for c in closed)
            if not written:
                return 0
            with self.db.transaction() as conn:
                self._write_windows(conn, closed)
                if closed:
                    conn.execute("DELETE FROM head WHERE time < ?", (current,))
                conn.executemany("INSERT INTO head (series_id, time, value) VALUES (?, ?, ?)", rows)
            for buf in self._open.values():
                buf.saved = len(buf.times)
            return written

    def _write_windows(
        self, conn: sqlite3.Connection, closed: list[tuple[int, float, Floats, Floats]]
    ) -> None:
        """Closed windows as raw blocks, and their rollups added to each rollup block once
        (a block of a day holds 96 windows: a backlog rewrites it once, not 96 times)."""
        rollups: dict[tuple[int, int, float], list[Rollup]] = {}
        for sid, start, times, values in closed:
            old = conn.execute(
                "SELECT data FROM blocks WHERE series_id = ? AND tier = ? AND start = ?",
                (sid, RAW, start),
            ).fetchone()
            if old is not None:
                times, values = _merge_raw(decode_raw(old[0]), (times, values))
            _upsert(conn, sid, RAW, start, times, encode_raw(times, values))
            for tier in self.tiers[1:]:
                block = math.floor(start / tier.window) * tier.window
                rollups.setdefault((sid, tier.index, block), []).append(
                    aggregate(times, values, tier.step)
                )
        for (sid, index, block), parts in rollups.items():
            self._add_rollup(conn, sid, self.tiers[index], block, Rollup.concat(parts))

    def _add_rollup(
        self, conn: sqlite3.Connection, sid: int, tier: Tier, start: float, new: Rollup
    ) -> None:
        old = conn.execute(
            "SELECT data FROM blocks WHERE series_id = ? AND tier = ? AND start = ?",
            (sid, tier.index, start),
        ).fetchone()
        both = Rollup.concat([decode_rollup(old[0]), new]) if old is not None else new
        rollup = merge_rollups(both.ordered(), tier.step)
        _upsert(conn, sid, tier.index, start, rollup.times, encode_rollup(rollup))

    # -- reading ---------------------------------------------------------------

    def series(
        self, metric: str | None = None, match: Mapping[str, str] | None = None
    ) -> list[SeriesInfo]:
        """Stored series, by metric name and labels (every given label must match)."""
        sql, params = "SELECT id, metric, labels FROM series", []
        if metric is not None:
            sql, params = sql + " WHERE metric = ?", [metric]
        found = []
        for sid, name, text in self.db.query(sql + " ORDER BY metric, labels", params):
            labels = json.loads(text)
            if all(labels.get(k) == v for k, v in (match or {}).items()):
                found.append(SeriesInfo(id=sid, metric=name, labels=labels))
        return found

    def metrics(self) -> list[str]:
        """Names of every stored metric."""
        return [r[0] for r in self.db.query("SELECT DISTINCT metric FROM series ORDER BY metric")]

    def read_raw(self, sid: int, start: float, end: float) -> tuple[Floats, Floats]:
        """Raw samples of a series with ``start <= time <= end``."""
        with self._lock:
            return self._read_raw(sid, start, end)

    def _read_raw(self, sid: int, start: float, end: float) -> tuple[Floats, Floats]:
        t, v = decode_raw_many([blob for (blob,) in self._blocks(sid, RAW, start, end)])
        head = self.db.query(
            "SELECT time, value FROM head WHERE series_id = ? AND time >= ? AND time <= ? "
            "ORDER BY time",
            (sid, start, end),
        )
        t.extend(row[0] for row in head)
        v.extend(row[1] for row in head)
        if len(t) and t[0] >= start and t[-1] <= end:
            return t, v
        lo, hi = bisect_left(t, start), bisect_right(t, end)
        return t[lo:hi], v[lo:hi]

    def read_rollup(self, sid: int, tier: int, start: float, end: float) -> Rollup:
        """Rollup buckets of a series starting within ``[start, end]`` (the open window too)."""
        with self._lock:
            return self._read_rollup(sid, tier, start, end)

    def _read_rollup(self, sid: int, tier: int, start: float, end: float) -> Rollup:
        step = self.tiers[tier].step
        # Blocks are disjoint windows, each of sorted and distinct buckets: only what the
        # open window adds (its samples in ``head``) may share a bucket with them.
        rollup = Rollup.concat(
            [decode_rollup(blob) for (blob,) in self._blocks(sid, tier, start, end)]
        )
        head = self.db.query(
            "SELECT time, value FROM head WHERE series_id = ? AND time >= ? ORDER BY time",
            (sid, math.floor(start / step) * step),
        )
        if head:
            fresh = aggregate([row[0] for row in head], [row[1] for row in head], step)
            cut = bisect_left(rollup.times, fresh.times[0])
            tail = Rollup.concat([rollup.cut(cut, len(rollup)), fresh]).ordered()
            rollup = Rollup.concat([rollup.cut(0, cut), merge_rollups(tail, step)])
        if len(rollup) == 0:
            return empty_rollup()
        lo, hi = bisect_left(rollup.times, start), bisect_right(rollup.times, end)
        return rollup if (lo, hi) == (0, len(rollup)) else rollup.cut(lo, hi)

    def _blocks(self, sid: int, tier: int, start: float, end: float) -> list[tuple[bytes]]:
        window = self.tiers[tier].window
        with self._lock:
            self.flush()
            return [
                (bytes(r[0]),)
                for r in self.db.query(
                    "SELECT data FROM blocks WHERE series_id = ? AND tier = ? AND start >= ? "
                    "AND start <= ? AND last >= ? ORDER BY start",
                    (sid, tier, start - window, end, start),
                )
            ]

    # -- retention and size ----------------------------------------------------

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete data older than each tier's retention; returns the blocks deleted."""
        now = self._clock() if now is None else now
        deleted = 0
        with self._lock:
            self.flush()
            with self.db.transaction() as conn:
                for tier in self.tiers:
                    deleted += self._expire(conn, tier, now - tier.retention)
                conn.execute("DELETE FROM head WHERE time < ?", (now - self.tiers[RAW].retention,))
                self._trim_open(now - self.tiers[RAW].retention)
                self._forget_empty(conn)
            self.db.execute("PRAGMA incremental_vacuum")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def _expire(self, conn: sqlite3.Connection, tier: Tier, cutoff: float) -> int:
        cursor = conn.execute(
            "DELETE FROM blocks WHERE tier = ? AND last < ?", (tier.index, cutoff)
        )
        straddling = conn.execute(
            "SELECT series_id, start, data FROM blocks WHERE tier = ? AND first < ?",
            (tier.index, cutoff),
        ).fetchall()
        for sid, start, blob in straddling:
            if tier.index == RAW:
                t, v = decode_raw(blob)
                lo = bisect_left(t, cutoff)
                _upsert(conn, sid, RAW, start, t[lo:], encode_raw(t[lo:], v[lo:]))
            else:
                rollup = decode_rollup(blob)
                rollup = rollup.cut(bisect_left(rollup.times, cutoff), len(rollup))
                _upsert(conn, sid, tier.index, start, rollup.times, encode_rollup(rollup))
        return int(cursor.rowcount)

    def _trim_open(self, cutoff: float) -> None:
        for sid, buf in list(self._open.items()):
            keep = [i for i, t in enumerate(buf.times) if t >= cutoff]
            if not keep:
                del self._open[sid]
                continue
            first = keep[0]
            buf.times, buf.values = buf.times[first:], buf.values[first:]
            buf.saved = max(0, buf.saved - first)

    def _forget_empty(self, conn: sqlite3.Connection) -> None:
        live = set(self._open)
        rows = conn.execute(
            "SELECT id, metric, labels FROM series WHERE id NOT IN (SELECT series_id FROM blocks)"
            " AND id NOT IN (SELECT series_id FROM head)"
        ).fetchall()
        for sid, metric, labels in rows:
            if sid in live:
                continue
            conn.execute("DELETE FROM series WHERE id = ?", (sid,))
            self._ids.pop((metric, labels), None)
            self._fast = {k: v for k, v in self._fast.items() if v != sid}
            self._last.pop(sid, None)

    def size_bytes(self) -> int:
        """Bytes on disk: the database file and its write-ahead log."""
        return self.db.size_bytes()

    def stats(self) -> StoreStats:
        """Size and content of the store (pending samples are written first)."""
        self.flush()
        blocks, raw = self.db.query(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN tier = 0 THEN count END), 0) FROM blocks"
        )[0]
        head = self.db.query("SELECT COUNT(*) FROM head")[0][0]
        series = self.db.query("SELECT COUNT(*) FROM series")[0][0]
        return StoreStats(
            path=str(self.db.path),
            size_bytes=self.size_bytes(),
            series=series,
            raw_samples=int(raw) + int(head),
            blocks=blocks,
            dropped=self.dropped,
        )


def _upsert(
    conn: sqlite3.Connection, sid: int, tier: int, start: float, times: Floats, data: bytes
) -> None:
    if len(times) == 0:
        conn.execute(
            "DELETE FROM blocks WHERE series_id = ? AND tier = ? AND start = ?", (sid, tier, start)
        )
        return
    conn.execute(
        "INSERT INTO blocks (series_id, tier, start, first, last, count, data) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (series_id, tier, start) DO UPDATE SET "
        "first = excluded.first, last = excluded.last, count = excluded.count, "
        "data = excluded.data",
        (sid, tier, start, float(times[0]), float(times[-1]), len(times), data),
    )


def _merge_raw(old: tuple[Floats, Floats], new: tuple[Floats, Floats]) -> tuple[Floats, Floats]:
    """Both blocks' samples by time; where both hold a time, the old block's value."""
    merged: dict[float, float] = {}
    for t, v in zip(old[0], old[1], strict=True):
        merged.setdefault(t, v)
    for t, v in zip(new[0], new[1], strict=True):
        merged.setdefault(t, v)
    times = sorted(merged)
    return array("d", times), array("d", [merged[t] for t in times])
