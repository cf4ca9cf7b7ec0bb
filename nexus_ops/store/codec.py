"""Compact encodings of sample blocks (numpy + zlib), for :mod:`nexus_ops.store.samples`.

A raw block holds the samples of one series in one time window: timestamps in
milliseconds, delta-of-delta encoded (a steady sampler gives zeros), and
float64 values XOR-ed with their predecessor (a slowly changing value gives
mostly zero bytes); both are byte-shuffled so that equal bytes stand together,
then zlib-compressed. A rollup block holds, per bucket, the bucket's start and
the minimum, maximum, sum and count of the samples in it.

>>> import numpy as np
>>> times = np.array([10.0, 11.0, 12.0]); values = np.array([1.5, 1.5, 2.0])
>>> t, v = decode_raw(encode_raw(times, values))
>>> t.tolist(), v.tolist()
([10.0, 11.0, 12.0], [1.5, 1.5, 2.0])
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

RAW_FORMAT = 1
ROLLUP_FORMAT = 2
_HEADER = struct.Struct("<BI")  # format, number of points
_LEVEL = 1  # zlib level: 1 compresses these arrays almost as well as 9, several times faster


@dataclass(frozen=True)
class Rollup:
    """Aggregates per bucket: start (seconds), minimum, maximum, sum and count."""

    times: Floats
    mins: Floats
    maxs: Floats
    sums: Floats
    counts: Ints

    def __len__(self) -> int:
        return len(self.times)

    @property
    def means(self) -> Floats:
        return self.sums / np.maximum(self.counts, 1)

    def select(self, mask: npt.NDArray[Any]) -> Rollup:
        return Rollup(
            self.times[mask], self.mins[mask], self.maxs[mask], self.sums[mask], self.counts[mask]
        )

    @staticmethod
    def concat(parts: list[Rollup]) -> Rollup:
        if not parts:
            return empty_rollup()
        return Rollup(
            np.concatenate([p.times for p in parts]),
            np.concatenate([p.mins for p in parts]),
            np.concatenate([p.maxs for p in parts]),
            np.concatenate([p.sums for p in parts]),
            np.concatenate([p.counts for p in parts]),
        )


def empty_rollup() -> Rollup:
    nothing = np.empty(0, dtype=np.float64)
    return Rollup(nothing, nothing, nothing, nothing, np.empty(0, dtype=np.int64))


def to_millis(times: Floats) -> Ints:
    return np.round(np.asarray(times, dtype=np.float64) * 1000.0).astype(np.int64)


def _shuffle(array: npt.NDArray[np.int64] | npt.NDArray[np.uint64]) -> bytes:
    return np.ascontiguousarray(array).view(np.uint8).reshape(-1, 8).T.tobytes()


def _unshuffle(data: bytes, n: int, dtype: type[np.generic]) -> npt.NDArray[np.generic]:
    planes = np.frombuffer(data, dtype=np.uint8, count=8 * n).reshape(8, n)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(n)


def _encode_times(times: Floats) -> Ints:
    millis = to_millis(times)
    if len(millis) < 2:
        return millis
    first = np.diff(millis)
    return np.concatenate([millis[:1], first[:1], np.diff(first)])


def _decode_times(encoded: Ints) -> Floats:
    if len(encoded) < 2:
        return encoded.astype(np.float64) / 1000.0
    deltas = np.cumsum(encoded[1:])
    millis = np.concatenate([encoded[:1], encoded[0] + np.cumsum(deltas)])
    return millis.astype(np.float64) / 1000.0


def _xor_floats(values: Floats) -> npt.NDArray[np.uint64]:
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    out = bits.copy()
    out[1:] ^= bits[:-1]
    return out


def _unxor_floats(encoded: npt.NDArray[np.uint64]) -> Floats:
    return np.bitwise_xor.accumulate(encoded).view(np.float64)


def encode_raw(times: Floats, values: Floats) -> bytes:
    """One block of (time, value) samples, compressed."""
    n = len(times)
    body = _shuffle(_encode_times(times)) + _shuffle(_xor_floats(values))
    return _HEADER.pack(RAW_FORMAT, n) + zlib.compress(body, _LEVEL)


def decode_raw(blob: bytes) -> tuple[Floats, Floats]:
    """The (times, values) of a block made by :func:`encode_raw`."""
    n = _check(blob, RAW_FORMAT)
    body = zlib.decompress(blob[_HEADER.size :])
    times = _decode_times(_unshuffle(body[: 8 * n], n, np.int64).astype(np.int64))
    values = _unxor_floats(_unshuffle(body[8 * n :], n, np.uint64).astype(np.uint64))
    return times, values


def encode_rollup(rollup: Rollup) -> bytes:
    """One block of rollup buckets, compressed."""
    n = len(rollup)
    body = b"".join(
        [
            _shuffle(_encode_times(rollup.times)),
            _shuffle(_xor_floats(rollup.mins)),
            _shuffle(_xor_floats(rollup.maxs)),
            _shuffle(_xor_floats(rollup.sums)),
            _shuffle(np.asarray(rollup.counts, dtype=np.int64)),
        ]
    )
    return _HEADER.pack(ROLLUP_FORMAT, n) + zlib.compress(body, _LEVEL)


def decode_rollup(blob: bytes) -> Rollup:
    """The buckets of a block made by :func:`encode_rollup`."""
    n = _check(blob, ROLLUP_FORMAT)
    body = zlib.decompress(blob[_HEADER.size :])
    part = [body[8 * n * i : 8 * n * (i + 1)] for i in range(5)]
    return Rollup(
        _decode_times(_unshuffle(part[0], n, np.int64).astype(np.int64)),
        _unxor_floats(_unshuffle(part[1], n, np.uint64).astype(np.uint64)),
        _unxor_floats(_unshuffle(part[2], n, np.uint64).astype(np.uint64)),
        _unxor_floats(_unshuffle(part[3], n, np.uint64).astype(np.uint64)),
        _unshuffle(part[4], n, np.int64).astype(np.int64),
    )


def _check(blob: bytes, expected: int) -> int:
    fmt, n = _HEADER.unpack_from(blob)
    if fmt != expected:
        raise ValueError(f"block format {fmt}, expected {expected}")
    return int(n)


def aggregate(times: Floats, values: Floats, step: float) -> Rollup:
    """Min, max, sum and count of ``values`` per bucket of ``step`` seconds (times sorted)."""
    if len(times) == 0:
        return empty_rollup()
    buckets = np.floor(times / step) * step
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    counts = np.diff(np.r_[starts, len(times)]).astype(np.int64)
    return Rollup(
        buckets[starts],
        np.minimum.reduceat(values, starts),
        np.maximum.reduceat(values, starts),
        np.add.reduceat(values, starts),
        counts,
    )


def merge_rollups(rollup: Rollup, step: float) -> Rollup:
    """Combine rollups of finer buckets (sorted by time) into buckets of ``step`` seconds."""
    if len(rollup) == 0:
        return rollup
    buckets = np.floor(rollup.times / step) * step
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    return Rollup(
        buckets[starts],
        np.minimum.reduceat(rollup.mins, starts),
        np.maximum.reduceat(rollup.maxs, starts),
        np.add.reduceat(rollup.sums, starts),
        np.add.reduceat(rollup.counts, starts),
    )


def _segment_cumsum(x: Ints, starts: Ints, lengths: Ints) -> Ints:
    """Cumulative sums restarting at every segment start."""
    total = np.cumsum(x)
    offsets = total[starts] - x[starts]
    return total - np.repeat(offsets, lengths)


def decode_raw_many(blobs: list[bytes]) -> tuple[Floats, Floats]:
    """The samples of many raw blocks, concatenated: :func:`decode_raw` in a few vector steps."""
    if not blobs:
        return np.empty(0), np.empty(0)
    ns = np.array([_check(blob, RAW_FORMAT) for blob in blobs], dtype=np.int64)
    bodies = [zlib.decompress(blob[_HEADER.size :]) for blob in blobs]
    time_planes, value_planes = [], []
    for body, n in zip(bodies, ns.tolist(), strict=True):
        planes = np.frombuffer(body, dtype=np.uint8).reshape(2, 8, n)
        time_planes.append(planes[0])
        value_planes.append(planes[1])
    encoded = np.ascontiguousarray(np.concatenate(time_planes, axis=1).T).view(np.int64)[:, 0]
    xored = np.ascontiguousarray(np.concatenate(value_planes, axis=1).T).view(np.uint64)[:, 0]
    starts = np.r_[0, np.cumsum(ns)[:-1]].astype(np.int64)
    # Times: element 0 of a block is its first time, 1 its first delta, then deltas of deltas.
    firsts = encoded[starts].copy()
    deltas = encoded.copy()
    deltas[starts] = 0
    deltas = _segment_cumsum(deltas, starts, ns)
    millis = _segment_cumsum(deltas, starts, ns) + np.repeat(firsts, ns)
    # Values: XOR with the predecessor inside each block; undo with a running XOR.
    running = np.bitwise_xor.accumulate(xored)
    before = np.zeros(len(ns), dtype=np.uint64)
    before[1:] = running[starts[1:] - 1]
    values = (running ^ np.repeat(before, ns)).view(np.float64)
    return millis.astype(np.float64) / 1000.0, values
