"""Writing a backup archive (zstd-compressed tar) while hashing every member.

Each file is read once: the bytes go to the archive and to its sha256 at the
same time, and the compressed bytes to the file and to the archive's sha256.
Archives of older versions (gzip) are still read.

>>> import io, tempfile
>>> from pathlib import Path
>>> target = Path(tempfile.mkdtemp()) / "a.tar.zst"
>>> with ArchiveWriter(target) as archive:
...     entry = archive.add_bytes("nexus/settings.json", b"{}")
>>> entry.sha256[:12], entry.size
('44136fa355b3', 2)
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, cast

import zstandard

from nexus_ops.backup.models import FileEntry
from nexus_ops.errors import BackupError

COMPRESS_LEVEL = 1  # like `zstd -1`: about gzip -6's size at many times its speed
CHUNK = 1 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


class _HashingSink(io.RawIOBase):
    """Passes the compressed bytes to ``raw``, hashing and counting them: the archive's
    checksum comes out of the same pass that writes it."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.digest.update(data)
        self.size += len(data)
        return self._raw.write(data)


class _Position:
    """The uncompressed stream as tarfile sees it: ``write`` and ``tell``, nothing else."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._offset = 0

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset


@contextlib.contextmanager
def read_archive(path: Path) -> Iterator[tarfile.TarFile]:
    """The archive as a tar stream, in one pass; zstd (``.tar.zst``) or, for backups
    made before zstd, gzip (``.tar.gz``), told apart by their first bytes."""
    with path.open("rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(GZIP_MAGIC):
            stream = cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
        else:  # zstd, or garbage that the decompressor reports as such
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            stream = cast(BinaryIO, reader)
        with stream, tarfile.open(fileobj=stream, mode="r|") as tar:
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
    """A tar.zst being written to ``path``; ``close()`` flushes and fsyncs it.

    zstd compresses on every core (its own threads, outside the GIL) while this
    thread reads and hashes the next bytes; tarfile writes straight into it in
    ``CHUNK`` pieces (its plain mode: no stream buffer to copy through).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.warnings: list[str] = []
        self._file = path.open("xb")
        self._sink = _HashingSink(self._file)
        compressor = zstandard.ZstdCompressor(level=COMPRESS_LEVEL, threads=-1, write_checksum=True)
        self._zstd = compressor.stream_writer(cast(BinaryIO, self._sink), closefd=False)
        self._tar = tarfile.TarFile(
            fileobj=cast(BinaryIO, _Position(cast(BinaryIO, self._zstd))),
            mode="w",
            format=tarfile.PAX_FORMAT,
            copybufsize=CHUNK,
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
            self._zstd.close()  # type: ignore[no-untyped-call]  # ends the frame, joins threads
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    @property
    def sha256(self) -> str:
        """Checksum of the archive file (complete once closed)."""
        return self._sink.digest.hexdigest()

    @property
    def size(self) -> int:
        return self._sink.size

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
