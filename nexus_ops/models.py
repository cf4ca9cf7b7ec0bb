"""Plain value types shared by the layers; no behaviour beyond formatting.

>>> ServerStatus(state=ServerState.STOPPED, desired="stopped", port=4096).state.value
'stopped'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ServerState(StrEnum):
    """Where the managed OpenCode server is in its life."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    FATAL = "fatal"


class EventKind(StrEnum):
    """What the journal records."""

    START = "start"
    READY = "ready"
    STOP = "stop"
    EXIT = "exit"
    RESTART = "restart"
    HUNG = "hung"
    MEMORY_LIMIT = "memory_limit"
    ADOPT = "adopt"
    FATAL = "fatal"
    START_FAILED = "start_failed"
    STALE_PIDFILE = "stale_pidfile"
    LOG_ROTATED = "log_rotated"
    AGENT_START = "agent_start"
    AGENT_STOP = "agent_stop"
    STORE_PROBLEM = "store_problem"
    RESTART_WAITING = "restart_waiting"
    RESTART_DRAINED = "restart_drained"
    DRAIN_TIMEOUT = "drain_timeout"
    RESTART_CANCELLED = "restart_cancelled"
    PROMPT_CUT = "prompt_cut"
    PAIRING_CREATED = "pairing_created"
    PAIRING_FAILED = "pairing_failed"
    PAIRING_RATE_LIMITED = "pairing_rate_limited"
    DEVICE_PAIRED = "device_paired"
    DEVICE_REVOKED = "device_revoked"


class RestartReason(StrEnum):
    """Why the server was restarted."""

    CRASH = "crash"
    HANG = "hang"
    MEMORY = "memory"
    OPERATOR = "operator"
    RESTORE = "restore"
    UPGRADE = "upgrade"
    START_FAILED = "start_failed"


# Who may stop the server through the API: an operator, or a live restore.
StopReason = Literal["operator", "restore"]
# The ends of a server that someone asked for: not trouble.
PLANNED_EXITS = frozenset(
    {RestartReason.OPERATOR.value, RestartReason.RESTORE.value, RestartReason.UPGRADE.value}
)


Desired = Literal["running", "stopped"]


@dataclass
class Counters:
    """Totals since the agent started, for /metrics (mutable: the supervisor counts)."""

    starts: int = 0
    stops: int = 0
    restarts_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionStatusAnswer:
    """One answer of the server's ``GET /session/status``: the sessions that are not
    idle, by id; when it came (the supervisor's monotonic seconds); how long it took."""

    statuses: dict[str, Any]
    at: float
    seconds: float


class Frozen(BaseModel):
    """Base of the value types: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ProcessRecord(Frozen):
    """Who a process is: enough to never signal a reused pid.

    ``pid`` and ``create_time`` survive exec; so does ``pgid``, the process group
    the process was in when recorded (its own, for a server this agent started).
    ``cmdline`` is what it showed then (a wrapper script's exec changes it later).
    """

    pid: int
    create_time: float
    cmdline: list[str]
    pgid: int | None = None


class ExitInfo(Frozen):
    """How a server process ended."""

    pid: int
    code: int | None = None
    signal: int | None = None
    reason: str = Field(description="crash, hang, memory, operator or adopted-exit")
    time: float

    def describe(self) -> str:
        how = f"signal {self.signal}" if self.signal else f"code {self.code}"
        if self.code is None and self.signal is None:
            how = "unknown status"
        return f"{self.reason}: pid {self.pid} exited with {how}"


class PendingRestart(Frozen):
    """A soft restart waiting for the server's busy sessions to finish."""

    reason: str = Field(description="memory, operator or restore")
    sessions: list[str] = Field(description="The sessions it waits for.")
    waiting_seconds: float = Field(description="Seconds it has waited so far.")
    timeout_in: float = Field(
        description="Seconds until it restarts anyway (NEXUS_DRAIN_TIMEOUT), cutting them."
    )


class ServerStatus(Frozen):
    """What the agent knows of the managed server right now."""

    state: ServerState
    desired: Desired
    pid: int | None = None
    version: str | None = None
    host: str = "127.0.0.1"
    port: int
    url: str = ""
    username: str = "opencode"
    healthy: bool = False
    uptime_seconds: float = 0.0
    restarts: int = 0
    last_exit: str | None = None
    last_error: str | None = None
    next_restart_in: float | None = None
    rss_bytes: int | None = None
    busy_sessions: list[str] = Field(
        default_factory=list, description="Sessions busy at the latest look at the server."
    )
    pending_restart: PendingRestart | None = None


class Event(Frozen):
    """One journal entry."""

    id: int
    time: float
    kind: str
    reason: str | None = None
    message: str = ""
    pid: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class AgentHealth(Frozen):
    """The agent's own liveness answer."""

    status: Literal["ok", "degraded"] = "ok"
    version: str
    uptime_seconds: float
    pid: int
    problems: list[str] = Field(
        default_factory=list,
        description="What went wrong with the agent's own files since it started (degraded).",
    )


class Readiness(Frozen):
    """Whether the managed server is up and answering."""

    ready: bool
    state: ServerState
    detail: str = ""


class ActionResult(Frozen):
    """The outcome of a start, stop or restart."""

    ok: bool
    message: str
    status: ServerStatus
    survivors: list[int] = Field(default_factory=list)


class ErrorBody(Frozen):
    """Every error the agent's API returns."""

    error: str
    hint: str | None = None
