"""The sample store: blocks, rollups and retention over synthetic history, exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nexus_ops.errors import StoreError
from nexus_ops.store.codec import (
    aggregate,
    decode_raw,
    decode_raw_many,
    decode_rollup,
    encode_raw,
    encode_rollup,
)
from nexus_ops.store.samples import HOUR, MINUTE, RAW_WINDOW, Retention, SampleStore

DAY = 86400.0
T0 = 1_800_000_000.0  # a whole hour (and day) in epoch seconds


def test_codec_round_trips_exactly() -> None:
    rng = np.random.default_rng(7)
    times = T0 + np.cumsum(rng.integers(1, 5000, 1000)) / 1000.0
    values = rng.normal(size=1000) * 1e6
    values[::7] = np.inf
    t, v = decode_raw(encode_raw(times, values))
    assert np.array_equal(t, times)
    assert np.array_equal(v, values)
    rollup = aggregate(times, values, 60.0)
    back = decode_rollup(encode_rollup(rollup))
    for name in ("times", "mins", "maxs", "sums", "counts"):
        assert np.array_equal(getattr(back, name), getattr(rollup, name))


def test_many_blocks_decode_at_once_like_one_by_one() -> None:
    rng = np.random.default_rng(11)
    blobs, times, values = [], [], []
    start = T0
    for n in (1, 2, 3, 900, 17, 1, 250):
        t = start + np.cumsum(rng.integers(1, 3000, n)) / 1000.0
        v = rng.normal(size=n) * 1e5
        start = float(t[-1]) + 1
        blobs.append(encode_raw(t, v))
        times.append(t)
        values.append(v)
    t, v = decode_raw_many(blobs)
    one_by_one = np.concatenate([decode_raw(blob)[0] for blob in blobs])
    assert np.array_equal(t, one_by_one)
    assert np.array_equal(t, np.round(np.concatenate(times) * 1000) / 1000)  # milliseconds
    assert np.array_equal(v, np.concatenate(values))
    assert len(decode_raw_many([])[0]) == 0


def test_codec_compresses_a_steady_sampler_well() -> None:
    times = T0 + np.arange(3600.0)
    values = 3.15e8 + np.cumsum(np.random.default_rng(1).integers(-4096, 4097, 3600)) * 1.0
    assert len(encode_raw(times, values)) / 3600 < 8


def _history(store: SampleStore, hours: float, step: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    times = T0 + np.arange(0.0, hours * 3600, step)
    values = (np.arange(len(times)) % 97).astype(float)  # integers: sums are exact
    store.append_many("m", {"k": "v"}, times, values)
    store.flush()
    return times, values


def test_raw_reads_back_every_sample_across_blocks_and_head(tmp_path) -> None:
    store = SampleStore(tmp_path / "metrics.db", clock=lambda: T0 + 3 * 3600)
    times, values = _history(store, 2.6)
    sid = store.series("m")[0].id
    t, v = store.read_raw(sid, times[0], times[-1])
    assert np.array_equal(t, times) and np.array_equal(v, values)
    t, v = store.read_raw(sid, T0 + 1000.5, T0 + 2000)
    assert t[0] == T0 + 1001 and t[-1] == T0 + 2000 and len(t) == 1000
    stats = store.stats()
    assert stats.raw_samples == len(times) and stats.series == 1


def test_rollups_hold_exact_min_max_sum_count(tmp_path) -> None:
    store = SampleStore(tmp_path / "metrics.db", clock=lambda: T0 + 4 * 3600)
    times, values = _history(store, 3.5, step=0.5)
    sid = store.series("m")[0].id
    for tier, step in ((MINUTE, 60.0), (HOUR, 3600.0)):
        rollup = store.read_rollup(sid, tier, T0, T0 + 4 * 3600)
        buckets = np.floor(times / step) * step
        expected = sorted(set(buckets.tolist()))
        assert rollup.times.tolist() == expected
        for i, start in enumerate(expected):
            inside = values[buckets == start]
            assert rollup.mins[i] == inside.min()
            assert rollup.maxs[i] == inside.max()
            assert rollup.sums[i] == inside.sum()
            assert rollup.counts[i] == len(inside)
            assert rollup.means[i] == pytest.approx(inside.mean())


def test_rollups_survive_a_reopen_mid_window(tmp_path) -> None:
    path = tmp_path / "metrics.db"
    times = T0 + np.arange(0.0, 2 * 3600)
    values = np.arange(len(times), dtype=float)
    store = SampleStore(path)
    store.append_many("m", {}, times[:4000], values[:4000])
    store.close()
    store = SampleStore(path)  # the open window comes back from the head table
    store.append_many("m", {}, times[4000:], values[4000:])
    store.flush()
    sid = store.series("m")[0].id
    hours = store.read_rollup(sid, HOUR, T0, T0 + 7200)
    assert hours.counts.tolist() == [3600, 3600]
    assert hours.sums.tolist() == [values[:3600].sum(), values[3600:].sum()]
    _, v = store.read_raw(sid, T0, T0 + 7200)
    assert np.array_equal(v, values)


def test_out_of_order_and_nan_samples_are_dropped_and_counted(tmp_path) -> None:
    store = SampleStore(tmp_path / "metrics.db")
    assert store.append("m", {}, T0 + 10, 1.0)
    assert not store.append("m", {}, T0 + 5, 2.0)
    assert not store.append("m", {}, T0 + 11, float("nan"))
    assert store.append_many("m", {}, [T0 + 12, T0 + 12, T0 + 13], [1.0, 2.0, 3.0]) == 2
    assert store.dropped == 3
    with pytest.raises(StoreError, match="3 times but 2 values"):
        store.append_many("m", {}, [1.0, 2.0, 3.0], [1.0, 2.0])


def test_retention_is_exact_per_tier(tmp_path) -> None:
    retention = Retention(raw=5 * 3600.0, minute=DAY, hour=2 * DAY)
    now = T0 + 3 * DAY
    store = SampleStore(tmp_path / "metrics.db", retention, clock=lambda: now)
    times, values = _history(store, 72, step=10.0)  # three days at 10 s
    size_before = store.size_bytes()
    deleted = store.enforce_retention()
    assert deleted > 0
    sid = store.series("m")[0].id
    t, v = store.read_raw(sid, 0, now)
    assert t[0] >= now - retention.raw and t[0] - (now - retention.raw) < 10
    assert np.array_equal(v, values[times >= now - retention.raw])
    minutes = store.read_rollup(sid, MINUTE, 0, now)
    assert minutes.times[0] == now - DAY
    hours = store.read_rollup(sid, HOUR, 0, now)
    assert hours.times[0] == now - 2 * DAY and len(hours) == 48
    inside = values[(times >= now - 2 * DAY) & (times < now - 2 * DAY + 3600)]
    assert hours.sums[0] == inside.sum() and hours.counts[0] == 360
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.size_bytes() < size_before


def test_retention_forgets_series_that_have_no_data_left(tmp_path) -> None:
    retention = Retention(raw=3600.0, minute=3600.0, hour=3600.0)
    store = SampleStore(tmp_path / "metrics.db", retention, clock=lambda: T0 + 10 * 3600)
    store.append_many("old", {}, T0 + np.arange(100.0), np.ones(100))
    store.append_many("new", {}, T0 + 9.5 * 3600 + np.arange(100.0), np.ones(100))
    store.enforce_retention()
    assert [s.metric for s in store.series()] == ["new"]


def test_series_match_labels_and_windows_close_for_quiet_series(tmp_path) -> None:
    store = SampleStore(tmp_path / "metrics.db")
    store.append("c", {"state": "LISTEN"}, T0, 1.0)
    store.append("c", {"state": "CLOSE_WAIT"}, T0, 3.0)
    # Only one series goes on: the quiet one's window still closes into a block.
    store.append("c", {"state": "LISTEN"}, T0 + RAW_WINDOW + 1, 1.0)
    store.flush()
    assert [s.labels for s in store.series("c", {"state": "CLOSE_WAIT"})] == [
        {"state": "CLOSE_WAIT"}
    ]
    quiet = store.series("c", {"state": "CLOSE_WAIT"})[0].id
    blocks = store.db.query("SELECT count FROM blocks WHERE series_id = ? AND tier = 0", (quiet,))
    assert blocks == [(1,)]
    assert store.db.query("SELECT COUNT(*) FROM head")[0][0] == 1


def test_a_store_deleted_or_replaced_under_it_is_rebuilt_with_every_sample(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.db"
    store = SampleStore(path)
    store.append("opencode_threads", {}, 60.0, 12.0)
    store.flush()
    assert store.db.check_identity() is None
    path.unlink()
    store.append("opencode_threads", {}, 61.0, 13.0)
    store.flush()  # written to the deleted file, which only the connection still holds
    problem = store.db.check_identity()
    assert problem is not None and "was deleted" in problem and "every record kept" in problem
    store.append("opencode_threads", {}, 62.0, 14.0)
    store.close()
    reopened = SampleStore(path)
    assert [s.metric for s in reopened.series()] == ["opencode_threads"]
    assert reopened.db.query("SELECT count(*) FROM head") == [(3,)]
    path.with_name("stranger.db").write_bytes(b"")
    path.with_name("stranger.db").replace(path)
    problem = reopened.db.check_identity()
    assert problem is not None and "was replaced" in problem
    displaced = list(tmp_path.glob("metrics.db.displaced-*"))
    assert len(displaced) == 1 and str(displaced[0]) in problem
    assert reopened.db.query("SELECT count(*) FROM head") == [(3,)]
    reopened.close()


@pytest.mark.parametrize("damage", ["garbage", "bad page"])
def test_a_damaged_store_is_set_aside_only_by_its_owner(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "metrics.db"
    store = SampleStore(path)
    for i in range(2000):
        store.append("opencode_threads", {"n": str(i % 50)}, 60.0 + i, float(i))
    store.flush()
    store.close()
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data[:100] = b"x" * 100
    else:  # the header stays valid; a b-tree page of a table is overwritten
        page = int.from_bytes(data[16:18], "big")
        data[2 * page : 3 * page] = b"\xff" * page
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"damaged|not a database|malformed"):
        SampleStore(path).series()  # a reader (the CLI, a notebook) does not move it
    owned = SampleStore(path, set_aside_damaged=True)
    assert owned.series() == [] and len(owned.db.problems) == 1
    aside = list(tmp_path.glob("metrics.db.corrupt-*Z"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(data)
    assert str(aside[0]) in owned.db.problems[0] and "fresh one" in owned.db.problems[0]
    owned.close()
