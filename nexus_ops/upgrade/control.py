"""How an upgrade stops, starts and watches the OpenCode server: a small Protocol.

The agent implements it with its supervisor (from the thread the upgrade runs in).

>>> class Nothing:
...     def stop(self, drain: bool) -> None: ...
...     def start(self) -> None: ...
...     def wait_healthy(self, timeout: float) -> None: ...
...     def status(self) -> ServerStatus: ...
>>> isinstance(Nothing(), UpgradeControl)
True
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from nexus_ops.models import ServerStatus


@runtime_checkable
class UpgradeControl(Protocol):
    """Stop, start and watch the managed OpenCode server."""

    def stop(self, drain: bool) -> None:
        """Stop the server (with ``drain``, once no session is busy, at most
        NEXUS_DRAIN_TIMEOUT); return once it is gone; raise when it did not stop."""

    def start(self) -> None:
        """Ask for the server to run (the active version)."""

    def wait_healthy(self, timeout: float) -> None:
        """Return once the server answers its health check; raise after ``timeout`` s."""

    def status(self) -> ServerStatus:
        """The supervisor's view of the server now."""
