"""Writing a backup archive (gzip-compressed tar) while hashing every member.

Each file is read once: the bytes go to the archive and to its sha256 at the
same time. Compression runs on a pool of threads (zlib releases the GIL), block by
block, so that reading and hashing overlap with deflating and every core deflates.

>>> import io, tempfile
>>> from pathlib import Path
>>> target = Path(tempfile.mkdtemp()) / "a.tar.gz"
>>> with ArchiveWriter(target) as archive:
...     entry = archive.add_bytes("nexus/settings.json", b"{}")
>>> entry.sha256[:12], entry.size
('44136fa355b3', 2)
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import gzip
import hashlib
import io
import os
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from nexus_ops.backup.models import FileEntry
from nexus_ops.errors import BackupError

COMPRESS_LEVEL = 6  # gzip's default, so that sizes compare with `tar czf`
CHUNK = 1 << 20
BLOCK = 4 << 20  # compressed independently: enough context for gzip's 32 KiB window


class _GzipPipe(io.RawIOBase):
    """A write-only stream that gzips into ``raw`` on several threads, like pigz.

    The stream is cut into blocks of ``BLOCK`` bytes; each is compressed by a pool
    of threads (zlib releases the GIL) into a gzip member of its own, and the members
    are written in order. Concatenated members are one valid gzip file (RFC 1952):
    ``gzip -d``, ``tar xzf`` and Python's ``gzip`` module read it whole.
    """

    def __init__(self, raw: BinaryIO, level: int = COMPRESS_LEVEL) -> None:
        super().__init__()
        self._raw = raw
        self._level = level
        workers = max(1, min(4, os.cpu_count() or 1))
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "backup-gzip")
        self._inflight: collections.deque[concurrent.futures.Future[bytes]] = collections.deque()
        self._window = workers * 2
        self.digest = hashlib.sha256()  # of the compressed bytes: the archive's checksum
        self.size = 0
        self._pending: list[bytes] = []
        self._pending_size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= BLOCK:
            self._submit()
        return len(chunk)

    def _submit(self) -> None:
        if not self._pending:
            return
        block = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        self._inflight.append(self._pool.submit(_gzip_member, block, self._level))
        while len(self._inflight) > self._window:
            self._emit(self._inflight.popleft().result())

    def _emit(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        self._raw.write(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._submit()
            if not self.size and not self._inflight:  # an empty stream is one empty member
                self._inflight.append(self._pool.submit(_gzip_member, b"", self._level))
            while self._inflight:
                self._emit(self._inflight.popleft().result())
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            super().close()


def _gzip_member(block: bytes, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: with a gzip header
    return compressor.compress(block) + compressor.flush()


@contextlib.contextmanager
def read_archive(path: Path) -> Iterator[tarfile.TarFile]:
    """The archive as a tar stream (every gzip member of it, in one pass)."""
    with gzip.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        yield tar


class _HashingReader:
    """Reads exactly ``size`` bytes of a file, hashing them; pads if the file shrank."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self._handle = handle
        self._left = size
        self.digest = hashlib.sha256()
        self.shrank = False

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._handle.read(n)
        if len(data) < n:  # the file was truncated while we read it (a log rotating)
            self.shrank = True
            data += b"\0" * (n - len(data))
        self._left -= len(data)
        self.digest.update(data)
        return data


class ArchiveWriter:
    """A tar.gz being written to ``path``; ``close()`` flushes and fsyncs it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.warnings: list[str] = []
        self._file = path.open("xb")
        self._pipe = _GzipPipe(self._file)
        self._buffer = io.BufferedWriter(self._pipe, CHUNK)  # type: ignore[type-var]
        self._tar = tarfile.open(  # noqa: SIM115 - closed in close()
            fileobj=self._buffer,
            mode="w|",
            format=tarfile.PAX_FORMAT,
            bufsize=CHUNK,
        )

    def add_file(self, source: Path, arcname: str, size: int, mode: int, mtime: float) -> FileEntry:
        info = self._info(arcname, tarfile.REGTYPE, mode, mtime)
        info.size = size
        try:
            with source.open("rb") as handle:
                reader = _HashingReader(handle, size)
                self._tar.addfile(info, reader)
        except OSError as exc:
            raise BackupError(f"could not read {source}: {exc.strerror or exc}") from exc
        if reader.shrank:
            self.warnings.append(f"{arcname} shrank while it was read; its tail is zeros")
        return FileEntry(
            path=arcname, size=size, sha256=reader.digest.hexdigest(), mode=mode, mtime=mtime
        )

    def add_bytes(self, arcname: str, data: bytes, mode: int = 0o644) -> FileEntry:
        info = self._info(arcname, tarfile.REGTYPE, mode, time.time())
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))
        return FileEntry(
            path=arcname,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            mode=mode,
            mtime=info.mtime,
        )

    def add_dir(self, arcname: str, mode: int, mtime: float) -> FileEntry:
        self._tar.addfile(self._info(arcname, tarfile.DIRTYPE, mode, mtime))
        return FileEntry(path=arcname, type="dir", mode=mode, mtime=mtime)

    def add_symlink(self, arcname: str, target: str, mtime: float) -> FileEntry:
        info = self._info(arcname, tarfile.SYMTYPE, 0o777, mtime)
        info.linkname = target
        self._tar.addfile(info)
        return FileEntry(path=arcname, type="symlink", mode=0o777, mtime=mtime, target=target)

    @staticmethod
    def _info(arcname: str, kind: bytes, mode: int, mtime: float) -> tarfile.TarInfo:
        info = tarfile.TarInfo(arcname)
        info.type = kind
        info.mode = mode & 0o777  # never setuid, setgid or sticky bits
        info.mtime = int(mtime)
        info.uname = info.gname = ""
        return info

    def close(self) -> None:
        """Finish the archive and make its bytes durable (not yet its name)."""
        if self._file.closed:
            return
        try:
            self._tar.close()
            self._buffer.close()  # joins the compressing thread
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    @property
    def sha256(self) -> str:
        """Checksum of the archive file (complete once closed)."""
        return self._pipe.digest.hexdigest()

    @property
    def size(self) -> int:
        return self._pipe.size

    def abort(self) -> None:
        """Close without caring for the content (the caller deletes the file)."""
        with contextlib.suppress(Exception):  # the caller deletes the partial file
            self.close()

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
