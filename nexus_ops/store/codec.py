"""Compact encodings of sample blocks (stdlib arrays + zlib), for :mod:`nexus_ops.store.samples`.

A raw block holds the samples of one series in one time window: timestamps in
milliseconds, delta-of-delta encoded (a steady sampler gives zeros), and
float64 values XOR-ed with their predecessor (a slowly changing value gives
mostly zero bytes); both are byte-shuffled so that equal bytes stand together,
then zlib-compressed. A rollup block holds, per bucket, the bucket's start and
the minimum, maximum, sum and count of the samples in it.

Columns are :class:`array.array` of the standard library (``d`` floats, ``q``
counts), not numpy's: the agent that writes and reads them stays without numpy
(about 20 MB). Anything iterable of numbers is accepted where columns go in.

>>> t, v = decode_raw(encode_raw([10.0, 11.0, 12.0], [1.5, 1.5, 2.0]))
>>> t.tolist(), v.tolist()
([10.0, 11.0, 12.0], [1.5, 1.5, 2.0])
"""

from __future__ import annotations

import math
import operator
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, compress, pairwise, repeat
from typing import TypeAlias

Floats: TypeAlias = "array[float]"  # typecode "d": float64
Ints: TypeAlias = "array[int]"  # typecode "q": int64
Column = Iterable[float] | Sequence[float]

RAW_FORMAT = 1
ROLLUP_FORMAT = 2
_HEADER = struct.Struct("<BI")  # format, number of points
_LEVEL = 1  # zlib level: 1 compresses these arrays almost as well as 9, several times faster
_MASK = (1 << 64) - 1
_LITTLE = sys.byteorder == "little"


def floats(values: Column = ()) -> Floats:
    """A float64 column of ``values`` (a list, an array, a numpy array...)."""
    if isinstance(values, array) and values.typecode == "d":
        return values
    return array("d", values)


def ints(values: Iterable[int] = ()) -> Ints:
    """An int64 column of ``values``."""
    if isinstance(values, array) and values.typecode == "q":
        return values
    return array("q", (int(v) for v in values))


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
        counts = self.counts
        if 0 in counts:  # never in a store's rollups: a bucket is made by a sample
            counts = array("q", [max(c, 1) for c in counts])
        return array("d", map(operator.truediv, self.sums, counts))

    def cut(self, lo: int, hi: int) -> Rollup:
        """Buckets ``lo`` to ``hi`` (excluded)."""
        return Rollup(
            self.times[lo:hi],
            self.mins[lo:hi],
            self.maxs[lo:hi],
            self.sums[lo:hi],
            self.counts[lo:hi],
        )

    def keep(self, flags: Sequence[bool]) -> Rollup:
        """The buckets whose flag is true."""
        return Rollup(
            array("d", compress(self.times, flags)),
            array("d", compress(self.mins, flags)),
            array("d", compress(self.maxs, flags)),
            array("d", compress(self.sums, flags)),
            array("q", compress(self.counts, flags)),
        )

    def ordered(self) -> Rollup:
        """The buckets by time (stable): as they are when they already are."""
        times = self.times
        if all(a <= b for a, b in pairwise(times)):
            return self
        order = sorted(range(len(times)), key=times.__getitem__)
        return Rollup(
            array("d", [times[i] for i in order]),
            array("d", [self.mins[i] for i in order]),
            array("d", [self.maxs[i] for i in order]),
            array("d", [self.sums[i] for i in order]),
            array("q", [self.counts[i] for i in order]),
        )

    @staticmethod
    def concat(parts: list[Rollup]) -> Rollup:
        if not parts:
            return empty_rollup()
        if len(parts) == 1:
            return parts[0]
        out = empty_rollup()
        for p in parts:
            out.times.extend(p.times)
            out.mins.extend(p.mins)
            out.maxs.extend(p.maxs)
            out.sums.extend(p.sums)
            out.counts.extend(p.counts)
        return out


def empty_rollup() -> Rollup:
    return Rollup(array("d"), array("d"), array("d"), array("d"), array("q"))


def to_millis(times: Column) -> list[int]:
    return [round(t * 1000.0) for t in times]


def _shuffle(column: array[int]) -> bytes:
    """The bytes of 64-bit items, little-endian, as eight planes (byte 0 of each, ...)."""
    data = _little(column).tobytes()
    return b"".join(data[i::8] for i in range(8))


def _unshuffle(data: bytes, n: int, typecode: str) -> array[int]:
    out = bytearray(8 * n)
    for i in range(8):
        out[i::8] = data[i * n : (i + 1) * n]
    return _little(array(typecode, bytes(out)))


def _little(column: array[int]) -> array[int]:
    """``column`` in little-endian byte order (the blocks' order on every machine)."""
    if _LITTLE:
        return column
    swapped = array(column.typecode, column)
    swapped.byteswap()
    return swapped


def _encode_times(times: Column) -> Ints:
    millis = to_millis(times)
    if len(millis) < 2:
        return array("q", millis)
    first = [b - a for a, b in pairwise(millis)]
    return array("q", [millis[0], first[0], *(b - a for a, b in pairwise(first))])


def _decode_times(encoded: Ints) -> Floats:
    if len(encoded) < 2:
        return array("d", map(operator.truediv, encoded, repeat(1000.0)))
    millis = accumulate(accumulate(encoded[1:]), initial=encoded[0])
    return array("d", map(operator.truediv, millis, repeat(1000.0)))


def _xor_floats(values: Column) -> array[int]:
    bits = array("Q", floats(values).tobytes())
    if not bits:
        return bits
    return array("Q", [bits[0], *map(operator.xor, bits[1:], bits)])


def _unxor_floats(encoded: array[int]) -> Floats:
    return array("d", array("Q", accumulate(encoded, operator.xor)).tobytes())


def encode_raw(times: Column, values: Column) -> bytes:
    """One block of (time, value) samples, compressed."""
    encoded = _encode_times(times)
    body = _shuffle(encoded) + _shuffle(_xor_floats(values))
    return _HEADER.pack(RAW_FORMAT, len(encoded)) + zlib.compress(body, _LEVEL)


def decode_raw(blob: bytes) -> tuple[Floats, Floats]:
    """The (times, values) of a block made by :func:`encode_raw`."""
    n = _check(blob, RAW_FORMAT)
    body = zlib.decompress(blob[_HEADER.size :])
    times = _decode_times(_unshuffle(body[: 8 * n], n, "q"))
    values = _unxor_floats(_unshuffle(body[8 * n :], n, "Q"))
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
            _shuffle(ints(rollup.counts)),
        ]
    )
    return _HEADER.pack(ROLLUP_FORMAT, n) + zlib.compress(body, _LEVEL)


def decode_rollup(blob: bytes) -> Rollup:
    """The buckets of a block made by :func:`encode_rollup`."""
    n = _check(blob, ROLLUP_FORMAT)
    body = zlib.decompress(blob[_HEADER.size :])
    part = [body[8 * n * i : 8 * n * (i + 1)] for i in range(5)]
    return Rollup(
        _decode_times(_unshuffle(part[0], n, "q")),
        _unxor_floats(_unshuffle(part[1], n, "Q")),
        _unxor_floats(_unshuffle(part[2], n, "Q")),
        _unxor_floats(_unshuffle(part[3], n, "Q")),
        _unshuffle(part[4], n, "q"),
    )


def _check(blob: bytes, expected: int) -> int:
    fmt, n = _HEADER.unpack_from(blob)
    if fmt != expected:
        raise ValueError(f"block format {fmt}, expected {expected}")
    return int(n)


def aggregate(times: Column, values: Column, step: float) -> Rollup:
    """Min, max, sum and count of ``values`` per bucket of ``step`` seconds (times sorted)."""
    out = empty_rollup()
    current = math.nan
    lo = hi = total = 0.0
    count = 0
    for t, v in zip(times, values, strict=True):
        bucket = math.floor(t / step) * step
        if bucket != current:
            if count:
                _add(out, current, lo, hi, total, count)
            current, lo, hi, total, count = bucket, v, v, 0.0, 0
        lo, hi = min(lo, v), max(hi, v)
        total += v
        count += 1
    if count:
        _add(out, current, lo, hi, total, count)
    return out


def _add(out: Rollup, start: float, lo: float, hi: float, total: float, count: int) -> None:
    out.times.append(start)
    out.mins.append(lo)
    out.maxs.append(hi)
    out.sums.append(total)
    out.counts.append(count)


def merge_rollups(rollup: Rollup, step: float) -> Rollup:
    """Combine rollups of finer buckets (sorted by time) into buckets of ``step`` seconds."""
    out = empty_rollup()
    current = math.nan
    lo = hi = total = 0.0
    count = 0
    columns = zip(rollup.times, rollup.mins, rollup.maxs, rollup.sums, rollup.counts, strict=True)
    for t, low, high, s, c in columns:
        bucket = math.floor(t / step) * step
        if bucket != current:
            if not math.isnan(current):
                _add(out, current, lo, hi, total, count)
            current, lo, hi, total, count = bucket, low, high, 0.0, 0
        lo, hi = min(lo, low), max(hi, high)
        total += s
        count += c
    if not math.isnan(current):
        _add(out, current, lo, hi, total, count)
    return out


def decode_raw_many(blobs: list[bytes]) -> tuple[Floats, Floats]:
    """The samples of many raw blocks, concatenated."""
    times, values = array("d"), array("d")
    for blob in blobs:
        t, v = decode_raw(blob)
        times.extend(t)
        values.extend(v)
    return times, values
