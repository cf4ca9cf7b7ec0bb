"""What the recovery functions work on: the settings, the folders, and the agent if it answers.

A diagnosis never starts anything: with no agent running it reads the files
(pidfile, journal, logs, database) directly. A repair that needs the agent starts
it (:meth:`RecoveryContext.agent`), as ``nexus-ops`` commands do.

>>> # ctx = connect(); ctx.client is None  # True when no agent answers
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from nexus_ops.backup.control import ServerControl
from nexus_ops.backup.sources import OpenCodeLocations
from nexus_ops.client import AgentClient
from nexus_ops.config import Settings, load_settings
from nexus_ops.errors import AgentUnavailable, NexusOpsError, OpenCodeUnavailable
from nexus_ops.opencode import Credentials, OpenCodeClient
from nexus_ops.paths import Layout


@dataclass
class RecoveryContext:
    """Settings, folders and (when one answers) a client of this host's agent."""

    settings: Settings
    layout: Layout
    locations: OpenCodeLocations
    client: AgentClient | None = None
    agent_error: str | None = None
    started_agent: bool = field(default=False)

    @property
    def password(self) -> str | None:
        path = self.layout.server_password_file
        try:
            return path.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def opencode(self, timeout: float = 2.0) -> OpenCodeClient:
        """A client of the OpenCode server itself (basic auth with the server's password)."""
        credentials = Credentials(self.settings.opencode_username, self.password or "")
        return OpenCodeClient(self.settings.opencode_base_url, credentials, timeout=timeout)

    def agent(self) -> AgentClient:
        """The agent's client, starting the agent when none answers (for repairs)."""
        if self.client is not None:
            return self.client
        from nexus_ops.daemon import start_daemon

        start_daemon(self.settings)
        self.client = AgentClient.from_settings(self.settings, timeout=120.0)
        self.started_agent, self.agent_error = True, None
        return self.client

    def control(self) -> ServerControl:
        """Stop and start the server through the agent (for a live restore)."""
        return AgentControl(self.agent())

    def describe(self) -> str:
        agent = (
            f"agent at {self.settings.agent_base_url}"
            if self.client
            else f"no agent ({self.agent_error})"
        )
        return (
            f"NEXUS_HOME {self.layout.home}; OpenCode data {self.locations.data_dir}; "
            f"server port {self.settings.opencode_port}; {agent}"
        )

    def _repr_markdown_(self) -> str:
        return self.describe()


def connect(environ: Mapping[str, str] | None = None) -> RecoveryContext:
    """The context of this host, from the environment; never starts the agent."""
    settings = load_settings(environ)
    context = RecoveryContext(
        settings=settings,
        layout=Layout(settings.home),
        locations=OpenCodeLocations.from_environ(environ),
    )
    if not Layout(settings.home).agent_token_file.exists():
        context.agent_error = "this NEXUS_HOME has no agent token yet: no agent has run here"
        return context
    client = AgentClient.from_settings(settings, timeout=60.0)
    try:
        client.health()
    except NexusOpsError as exc:
        client.close()
        context.agent_error = exc.message
        return context
    context.client = client
    return context


class AgentControl:
    """A :class:`~nexus_ops.backup.control.ServerControl` through the agent's API."""

    def __init__(self, client: AgentClient) -> None:
        self.client = client

    def stop(self) -> None:
        result = self.client.stop(when_idle=True, reason="restore")
        if not result.ok:
            raise NexusOpsError(f"the server did not stop: {result.message}")

    def start(self) -> None:
        self.client.start(wait=False)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                status = self.client.status()
            except AgentUnavailable as exc:
                last = exc.message
            else:
                if status.healthy:
                    return
                last = status.last_error or status.state.value
            time.sleep(0.2)
        raise OpenCodeUnavailable(f"the server was not healthy within {timeout:g} s ({last})")
