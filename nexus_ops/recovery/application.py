"""Application failure: is the server up, what do its logs and exits say, are resources
short, is the configuration sound; and the repair: (re)start it through the agent.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from nexus_ops import logs
from nexus_ops.config import load_settings
from nexus_ops.errors import NexusOpsError
from nexus_ops.models import PLANNED_EXITS, Event, EventKind
from nexus_ops.process import (
    fd_usage,
    find_live,
    is_ancestor,
    load_record,
    memory_available,
    port_listener,
)
from nexus_ops.recovery.context import RecoveryContext
from nexus_ops.recovery.results import Check, Step
from nexus_ops.redact import redact
from nexus_ops.store import Database, Journal
from nexus_ops.versions import selected_binary

_TROUBLE = re.compile(
    r"\b(ERROR|FATAL|panic|Traceback|Errors ---|EADDRINUSE|out of memory)\b", re.IGNORECASE
)
_EXIT_KINDS = (
    EventKind.EXIT,
    EventKind.FATAL,
    EventKind.HUNG,
    EventKind.START_FAILED,
    EventKind.MEMORY_LIMIT,
    EventKind.RESTART,
)
MIN_FREE_BYTES = 500 * 1024 * 1024


def server_status(ctx: RecoveryContext, wait: float = 0.0) -> Check:
    """Is the server running and answering its health check? (``wait``: seconds to allow)"""
    deadline = time.monotonic() + wait
    while True:
        check = _status_once(ctx)
        if check.ok or time.monotonic() >= deadline:
            return check
        time.sleep(0.5)


def _status_once(ctx: RecoveryContext) -> Check:
    if ctx.client is not None:
        try:
            status = ctx.client.status()
        except NexusOpsError as exc:
            return Check(
                name="server", ok=False, summary=f"the agent did not answer: {exc.message}"
            )
        details = {
            "state": status.state.value,
            "desired": status.desired,
            "pid": status.pid,
            "version": status.version,
            "restarts": status.restarts,
            "last exit": status.last_exit,
            "last error": status.last_error,
        }
        summary = (
            f"running and healthy (pid {status.pid}, v{status.version})"
            if status.healthy
            else f"{status.state.value}, not healthy"
            + (
                f": {status.last_error or status.last_exit}"
                if status.last_error or status.last_exit
                else ""
            )
        )
        return Check(name="server", ok=status.healthy, summary=summary, details=details)
    record = load_record(ctx.layout.server_pidfile)
    alive = record is not None and find_live(record) is not None
    try:
        client = ctx.opencode()
        health = client.health()
        client.close()
    except NexusOpsError as exc:
        return Check(
            name="server",
            ok=False,
            summary=f"no agent ({ctx.agent_error}); the server does not answer: {exc.message}",
            details={"pidfile process alive": alive},
        )
    return Check(
        name="server",
        ok=True,
        summary=f"answers (v{health.version}), but no agent supervises it",
        details={"pidfile process alive": alive},
    )


def recent_logs(ctx: RecoveryContext, lines: int = 200, show: int = 10) -> Check:
    """Trouble in the server's recent log lines (errors, panics, config errors)."""
    if ctx.client is not None:
        tail = ctx.client.logs(lines)
    else:
        secrets = [ctx.password or ""]
        tail = [redact(line, secrets) for line in logs.tail(ctx.layout.server_log, lines)]
    trouble = [line for line in tail if _TROUBLE.search(line)]
    if not tail:
        return Check(
            name="logs",
            ok=True,
            severity="warning",
            summary=f"no log lines yet ({ctx.layout.server_log})",
        )
    summary = (
        f"{len(trouble)} of the last {len(tail)} lines report trouble"
        if trouble
        else f"nothing alarming in the last {len(tail)} lines"
    )
    return Check(
        name="logs",
        ok=not trouble,
        severity="warning",
        summary=summary,
        details={
            "last lines with trouble": "\n".join(trouble[-show:]) or "-",
            "last line": tail[-1][:300],
        },
    )


def recent_exits(ctx: RecoveryContext, hours: float = 24.0) -> Check:
    """Exits, restarts, hangs and fatal states in the journal."""
    since = time.time() - hours * 3600
    events = _journal_events(ctx, since)
    if events is None:
        return Check(
            name="exits",
            ok=True,
            severity="warning",
            summary="no journal yet: nexus-ops has not supervised a server here",
        )
    trouble = [e for e in events if e.kind in _EXIT_KINDS and e.reason not in PLANNED_EXITS]
    lines = [
        f"{time.strftime('%H:%M:%S', time.localtime(e.time))} {e.kind}"
        f"{' (' + e.reason + ')' if e.reason else ''}: {e.message}"
        for e in trouble
    ]
    fatal = any(e.kind == EventKind.FATAL for e in trouble)
    summary = (
        f"{len(trouble)} exit(s) or restart(s) in {hours:g} h"
        if trouble
        else f"no unplanned exit in {hours:g} h"
    )
    return Check(
        name="exits",
        ok=not trouble,
        severity="warning",  # history: whether it is up now is the server check's question
        summary=summary + (" - the restart limit was hit (fatal)" if fatal else ""),
        details={"events": "\n".join(lines[-10:]) or "-"},
    )


def _journal_events(ctx: RecoveryContext, since: float) -> list[Event] | None:
    if ctx.client is not None:
        return ctx.client.events(since=since, limit=500)
    if not ctx.layout.database.exists():
        return None
    database = Database(ctx.layout.database)
    try:
        return Journal(database).events(since=since, limit=500)
    finally:
        database.close()


def system_resources(ctx: RecoveryContext, min_free_percent: float = 5.0) -> Check:
    """Memory, disk (data and NEXUS_HOME) and the server's file descriptors."""
    problems: list[str] = []
    available, total = memory_available()
    details: dict[str, object] = {"memory available": f"{available >> 20} of {total >> 20} MiB"}
    if available < total * min_free_percent / 100:
        problems.append(f"memory: only {available >> 20} MiB available")
    for label, folder in (
        ("disk (OpenCode data)", ctx.locations.data_dir),
        ("disk (NEXUS_HOME)", ctx.layout.home),
    ):
        usage = shutil.disk_usage(_existing(folder))
        details[label] = f"{usage.free >> 20} of {usage.total >> 20} MiB free"
        if usage.free < max(MIN_FREE_BYTES, usage.total * min_free_percent / 100):
            problems.append(f"{label}: only {usage.free >> 20} MiB free")
    pid = port_listener(ctx.settings.opencode_port)
    fds = fd_usage(pid) if pid else None
    if fds is not None:
        details["server file descriptors"] = f"{fds[0]} of {fds[1]}"
        if fds[0] > 0.8 * fds[1]:
            problems.append(f"file descriptors: {fds[0]} of {fds[1]} in use")
    return Check(
        name="resources",
        ok=not problems,
        summary="; ".join(problems) or "memory, disk and file descriptors are fine",
        details=details,
    )


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_configuration(ctx: RecoveryContext) -> Check:
    """The settings load, the binary is there, OpenCode's config parses, the port is ours."""
    problems: list[str] = []
    details: dict[str, object] = {}
    try:
        load_settings()
        details["settings"] = "valid"
    except NexusOpsError as exc:
        problems.append(exc.message)
    try:
        details["binary"] = str(selected_binary(ctx.settings).binary)
    except NexusOpsError as exc:
        problems.append(exc.message)
    for name in ("opencode.json", "opencode.jsonc"):
        path = ctx.locations.config_dir / name
        if path.is_file():
            error = jsonc_error(path.read_text(encoding="utf-8", errors="replace"))
            details[name] = error or "parses"
            if error:
                problems.append(f"{path}: {error}")
    holder = port_listener(ctx.settings.opencode_port)
    record = load_record(ctx.layout.server_pidfile)
    if holder is not None and (record is None or not is_ancestor(record.pid, holder)):
        from nexus_ops.process import describe_pid

        problems.append(f"port {ctx.settings.opencode_port} is held by {describe_pid(holder)}")
    return Check(
        name="configuration",
        ok=not problems,
        summary="; ".join(problems) or "settings, binary, OpenCode config and port are fine",
        details=details,
    )


def jsonc_error(text: str) -> str | None:
    """Why ``text`` is not valid JSON with comments (JSONC), or None when it is."""
    import json

    cleaned = re.sub(
        r'("(?:\\.|[^"\\])*")|//[^\n]*|/\*.*?\*/', lambda m: m.group(1) or "", text, flags=re.DOTALL
    )
    cleaned = re.sub(r",(\s*[}\]])", r"\1", cleaned)
    try:
        json.loads(cleaned)
    except json.JSONDecodeError as exc:
        return f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    return None


def restart_server(ctx: RecoveryContext, *, needed: bool, dry_run: bool) -> Step:
    """Start (or restart) the server through the agent, starting the agent if needed."""
    if not needed:
        return Step(name="restart", done=False, summary="nothing to do: the server is healthy")
    if dry_run:
        how = (
            "restart the server through the agent"
            if ctx.client
            else "start the agent and the server"
        )
        return Step(name="restart", done=False, summary=f"would {how}")
    try:
        client = ctx.agent()
        status = client.status()
        result = client.restart() if status.pid else client.start()
    except NexusOpsError as exc:
        return Step(name="restart", done=True, ok=False, summary=exc.message)
    return Step(
        name="restart",
        done=True,
        ok=result.ok,
        summary=f"{result.message} (pid {result.status.pid})"
        + (" - the agent was started first" if ctx.started_agent else ""),
        details={"state": result.status.state.value},
    )
