"""The one exception tree of nexus-ops.

Every error the package raises on purpose derives from :class:`NexusOpsError`,
carries a message that says what was wrong, and, where there is one, a ``hint``
that says what to do about it. Errors of the libraries we use (psutil, httpx,
sqlite3, papermill) are mapped into this tree in the module that owns each::

    NexusOpsError
    ├── ConfigError                 bad settings (lists every bad variable)
    ├── BinaryNotFound              no OpenCode binary to run
    ├── InstallError                installing OpenCode from npm failed
    ├── PortInUse                   the server's port is held by another process
    ├── ProcessError                spawning or signalling a process failed
    ├── OpenCodeUnavailable         the OpenCode server did not answer in time
    ├── StoreError                  the embedded database could not be used
    │   └── RunNotFound             no runbook run with that id
    ├── AgentUnavailable            no agent answers at the configured address
    ├── AgentError                  the agent answered with an error
    │   └── Unauthorized            the agent refused the token
    ├── BackupError                 creating, verifying or restoring a backup
    │   ├── UnsafeArchive           an archive member would escape the target
    │   ├── BackupNotFound          no backup with that id
    │   └── InvalidBackupId         a backup id that is not one (HTTP 400)
    ├── RunbookError                cataloguing or running a runbook
    │   ├── ParameterError          a runbook parameter is unknown or mistyped
    │   └── RunbookNotFound         no runbook of that name
    ├── SecurityError               an unsafe setting was refused
    ├── PairingRefused              a pairing code wrong, expired, used, or too many tries
    ├── StorageFull                 a file could not be written: no space left: HTTP 507
    └── NotFound                    (mixin) the thing a request names does not exist: HTTP 404
        └── DeviceNotFound          no paired device with that id
"""

from __future__ import annotations


class NexusOpsError(Exception):
    """Root of every nexus-ops error: a message, and a hint of what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(NexusOpsError):
    """One or more settings are invalid; the message lists every one."""


class BinaryNotFound(NexusOpsError):
    """No OpenCode binary could be found to run."""


class InstallError(NexusOpsError):
    """Installing OpenCode from the npm registry failed."""


class DiskFull(InstallError):
    """An install ran out of disk space (nothing was left behind)."""


class PortInUse(NexusOpsError):
    """The port the server should listen on is already taken."""


class ProcessError(NexusOpsError):
    """A process could not be spawned, inspected or signalled."""


class OpenCodeUnavailable(NexusOpsError):
    """The OpenCode server did not answer, or answered that it is unhealthy."""


class StoreError(NexusOpsError):
    """The embedded SQLite database could not be opened or written."""


class AgentUnavailable(NexusOpsError):
    """No nexus-ops agent answers at the configured address."""


class AgentError(NexusOpsError):
    """The agent answered a request with an error."""

    def __init__(self, message: str, hint: str | None = None, status: int = 500) -> None:
        super().__init__(message, hint)
        self.status = status


class Unauthorized(AgentError):
    """The agent refused the request's token."""


class BackupError(NexusOpsError):
    """A backup could not be created, verified, pruned or restored."""


class UnsafeArchive(BackupError):
    """An archive holds a member that would be written outside its target."""


class RunbookError(NexusOpsError):
    """A runbook could not be found, read or run."""


class ParameterError(RunbookError):
    """A runbook parameter is unknown or of the wrong type."""


class SecurityError(NexusOpsError):
    """A setting or request was refused because it is unsafe."""


class StorageFull(NexusOpsError):
    """A file could not be written because its file system is full; the API answers 507."""

    status = 507


class NotFound(NexusOpsError):
    """What a request names (a backup, a runbook, a run) does not exist; the API answers 404."""

    status = 404


class BackupNotFound(BackupError, NotFound):
    """No backup has that id."""


class InvalidBackupId(BackupError, ValueError):
    """A backup id (from a request, an argument or a manifest on disk) is not a backup id;
    a ValueError too, so that a manifest holding one fails its validation."""

    status = 400


class RunbookNotFound(RunbookError, NotFound):
    """No runbook has that name."""


class RunNotFound(StoreError, NotFound):
    """No runbook run has that id."""


class PairingRefused(NexusOpsError):
    """A pairing code was refused: wrong, expired, used, or too many tries (HTTP 400/429)."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        status: int = 400,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.status = status
        self.retry_after = retry_after


class DeviceNotFound(NotFound):
    """No paired device with that id."""

    status = 404
