"""Advisory file locks (fcntl) shared by every process on the host.

The kernel drops a lock when its holder dies, so a crashed process never leaves a
stale lock behind. The lock file holds the holder's pid and what it is doing, so
that a refused caller can say who has it.

>>> import tempfile
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "demo.lock"
>>> with FileLock(path, "demo"):
...     FileLock(path, "other").holder().startswith("demo (pid")
True
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from nexus_ops.errors import NexusOpsError


class LockBusy(NexusOpsError):
    """The lock is held by another holder (named in the message)."""


class FileLock:
    """An exclusive lock on ``path``; ``what`` says what the holder is doing.

    ``acquire(wait=0)`` fails at once when the lock is held; a positive ``wait``
    polls for that many seconds.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockBusy(
                        f"{self.what} cannot start: {self.holder() or 'another process'} "
                        "holds the lock",
                        hint=f"wait for it to finish (lock file {self.path})",
                    ) from None
                time.sleep(0.1)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{self.what}\n".encode())
        except OSError:
            os.close(fd)  # a lock whose holder cannot be written (a full disk) is not kept
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def holder(self) -> str | None:
        """'what (pid N)' of the current holder, when the file names one."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        if len(lines) < 2:
            return None
        return f"{lines[1]} (pid {lines[0]})"

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


__all__ = ["FileLock", "LockBusy"]
