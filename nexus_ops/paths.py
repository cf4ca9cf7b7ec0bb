"""The data folder (``NEXUS_HOME``) and safe ways to write into it.

Writes are atomic (temporary file, fsync, rename, fsync of the folder), and
secret files are created 0600 inside a 0700 folder, so a crash never leaves a
half-written file and no other user can read a secret.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nexus_ops.errors import NexusOpsError


@dataclass(frozen=True)
class Layout:
    """Where everything lives under ``NEXUS_HOME``.

    >>> Layout(Path("/srv/nx")).database
    PosixPath('/srv/nx/nexus.db')
    """

    home: Path

    @property
    def database(self) -> Path:
        return self.home / "nexus.db"

    @property
    def metrics_database(self) -> Path:
        return self.home / "metrics.db"

    @property
    def secrets(self) -> Path:
        return self.home / "secrets"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def backups(self) -> Path:
        return self.home / "backups"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def entry(self) -> Path:
        """The HTTPS entry's config, its Caddy's data and its local CA."""
        return self.home / "entry"

    @property
    def upgrades(self) -> Path:
        """Each upgrade's record and the databases set aside by rollbacks."""
        return self.home / "upgrades"

    @property
    def opencode_prefix(self) -> Path:
        return self.home / "opencode"

    @property
    def server_log(self) -> Path:
        return self.logs / "opencode.log"

    @property
    def agent_log(self) -> Path:
        return self.logs / "agent.log"

    @property
    def server_pidfile(self) -> Path:
        return self.home / "opencode.pid"

    @property
    def agent_pidfile(self) -> Path:
        return self.home / "agent.pid"

    @property
    def server_password_file(self) -> Path:
        return self.secrets / "opencode.password"

    @property
    def agent_token_file(self) -> Path:
        return self.secrets / "agent.token"

    def ensure(self) -> Layout:
        """Create the folders and return self.

        New folders are 0700: the backups hold OpenCode's provider keys and
        sessions, the logs and runs what the server said; no other user reads them.
        """
        folders = (self.home, self.logs, self.backups, self.runs, self.secrets)
        try:
            for folder in folders:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.secrets.chmod(0o700)
        except OSError as exc:
            raise self._unwritable(Path(exc.filename or self.home), exc.strerror) from exc
        for folder in folders:
            if not os.access(folder, os.W_OK):
                raise self._unwritable(folder, "not writable")
        return self

    def _unwritable(self, folder: Path, reason: str | None) -> NexusOpsError:
        return NexusOpsError(
            f"NEXUS_HOME {self.home} cannot be used: {folder}: {reason or 'not writable'}",
            hint="make that folder writable by this user (is it a read-only mount?), "
            "or point NEXUS_HOME at a writable folder",
        )


def make_private(paths: Iterable[Path]) -> None:
    """Take group's and others' permissions off each of ``paths`` that exists (a folder: 0700)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077 and not stat.S_ISLNK(info.st_mode):
                path.chmod(mode & ~0o077)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_or_create_secret(path: Path, nbytes: int = 32) -> str:
    """The secret kept in ``path``; generated (0600) when the file does not exist yet."""
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
        raise NexusOpsError(
            f"secret file {path} is empty",
            hint="delete it so that a new secret is generated, or write one into it",
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    atomic_write(path, (value + "\n").encode(), mode=0o600)
    return value
