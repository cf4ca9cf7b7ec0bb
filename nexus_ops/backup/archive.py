"""Writing a backup archive (gzip-compressed tar) while hashing every member.

Each file is read once: the bytes go to the archive and to its sha256 at the
same time. Compression runs in a second thread (zlib releases the GIL), so that
reading and hashing overlap with deflating, the way ``tar czf`` overlaps tar and
gzip in two processes.

>>> import io, tempfile
>>> from pathlib import Path
>>> target = Path(tempfile.mkdtemp()) / "a.tar.gz"
>>> with ArchiveWriter(target) as archive:
...     entry = archive.add_bytes("nexus/settings.json", b"{}")
>>> entry.sha256[:12], entry.size
('44136fa355b3', 2)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import tarfile
import threading
import time
import zlib
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from nexus_ops.backup.models import FileEntry
from nexus_ops.errors import BackupError

COMPRESS_LEVEL = 6  # gzip's default, so that sizes compare with `tar czf`
CHUNK = 1 << 20


class _GzipPipe(io.RawIOBase):
    """A write-only stream that gzips in a background thread into ``raw``."""

    def __init__(self, raw: BinaryIO, level: int = COMPRESS_LEVEL) -> None:
        super().__init__()
        self._raw = raw
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip header
        self.digest = hashlib.sha256()  # of the compressed bytes: the archive's checksum
        self.size = 0
        self._thread = threading.Thread(target=self._work, name="backup-gzip", daemon=True)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._thread.start()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._error is not None:
            raise self._error
        chunk = bytes(data)
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= CHUNK:
            self._flush_pending()
        return len(chunk)

    def _flush_pending(self) -> None:
        if self._pending:
            self._queue.put(b"".join(self._pending))
            self._pending, self._pending_size = [], 0

    def _work(self) -> None:
        try:
            while (chunk := self._queue.get()) is not None:
                self._emit(self._compressor.compress(chunk))
            self._emit(self._compressor.flush())
        except BaseException as exc:  # handed to the writer thread on its next write
            self._error = exc
            while self._queue.get() is not None:
                pass

    def _emit(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        self._raw.write(data)

    def close(self) -> None:
        if self.closed:
            return
        self._flush_pending()
        self._queue.put(None)
        self._thread.join()
        super().close()
        if self._error is not None:
            raise self._error


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
