"""How a restore stops and starts the OpenCode server: a small Protocol.

The agent implements it with its supervisor; the CLI and the runbooks with the
agent's client. A restore calls ``stop()`` before it replaces any file, then
``start()`` and ``wait_healthy()``; each raises on failure, which makes the
restore put the previous state back.

>>> control = CallbackControl(stop=lambda: None, start=lambda: None,
...                           wait_healthy=lambda timeout: None)
>>> isinstance(control, ServerControl)
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class ServerControl(Protocol):
    """Stop, start and wait for the managed OpenCode server."""

    def stop(self) -> None:
        """Stop the server and return once it is gone (no-op when it is not running)."""

    def start(self) -> None:
        """Ask for the server to run."""

    def wait_healthy(self, timeout: float) -> None:
        """Return once the server answers its health check; raise after ``timeout`` s."""


@dataclass(frozen=True)
class CallbackControl:
    """A ServerControl made of three callables (e.g. bound to a supervisor)."""

    stop: Callable[[], None]
    start: Callable[[], None]
    wait_healthy: Callable[[float], None]


class NoServer:
    """For hosts where nothing serves the data (restoring before a server is set up)."""

    def stop(self) -> None:
        return None

    def start(self) -> None:
        return None

    def wait_healthy(self, timeout: float) -> None:
        return None
