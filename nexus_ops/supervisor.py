"""The supervisor: keeps one OpenCode server in its desired state, and tells the truth.

It starts the native binary in its own process group, watches it exit (a pidfd,
so a crash is seen at once), probes ``/global/health`` to catch a server that is
alive but hung (SIGSTOP included), restarts it with capped exponential backoff
and jitter, gives up (``fatal``) after too many automatic restarts in a window,
and adopts a server that a previous agent left running. Every transition goes to
the journal.

It also follows which sessions are busy (``GET /session/status`` at each probe),
and keeps the latest answer for the sampler and the usage tracker, which take it
instead of asking again (:meth:`Supervisor.recent_session_status`).
A soft restart (the soft memory limit, an operator's restart ``when_idle``) waits
until none is, at most ``NEXUS_DRAIN_TIMEOUT``, in a task of its own that takes the
lock only for the restart itself; a hard fault restarts at once, and every prompt a
restart or an exit cut is journaled (``prompt_cut``). The desired state (running or stopped) is stored, so an operator's
stop is never undone and a new agent restores it.

>>> from nexus_ops.supervisor import backoff_delay
>>> backoff_delay(3, initial=0.25, cap=30.0, jitter=1.0)
1.0
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_ops import logs
from nexus_ops.backup.sources import OpenCodeLocations
from nexus_ops.config import Settings
from nexus_ops.drain import BusySessions, Drain, decide, describe_sessions
from nexus_ops.errors import NexusOpsError, OpenCodeUnavailable, PortInUse
from nexus_ops.models import (
    ActionResult,
    Counters,
    Desired,
    EventKind,
    ExitInfo,
    PendingRestart,
    ProcessRecord,
    RestartReason,
    ServerState,
    ServerStatus,
    SessionStatusAnswer,
)
from nexus_ops.opencode import AsyncOpenCodeClient, Credentials, Health
from nexus_ops.paths import Layout, make_private, read_or_create_secret
from nexus_ops.process import (
    Spawned,
    check_port_free,
    find_live,
    listens_on,
    load_record,
    orphaned_server,
    pidfd,
    remove_record,
    save_record,
    server_problem,
    spawn,
    terminate_tree,
    tree_rss,
    wait_status,
)
from nexus_ops.store import Journal
from nexus_ops.store.versions import VersionStore
from nexus_ops.versions import Versions

log = logging.getLogger(__name__)

RequestObserver = Callable[[str, float, bool], None]
_UNHEALTHY_EVENT = {
    RestartReason.HANG: EventKind.HUNG,
    RestartReason.MEMORY: EventKind.MEMORY_LIMIT,
    RestartReason.START_FAILED: EventKind.START_FAILED,
}
_KEY_DESIRED = "desired"
_KEY_FATAL = "fatal"
_KEY_RESTARTS = "restarts"
# What the server creates (opencode.db, its WAL, its logs) is for this user alone.
_SERVER_UMASK = 0o077
_MIB = 1024 * 1024
# Seconds after the end of this agent's server in which its port may still be let go.
_RECENT_EXIT = 30.0


def stored_desired(journal: Journal) -> Desired:
    """The desired state kept in the journal's store (stopped unless set to running)."""
    return "running" if journal.get(_KEY_DESIRED) == "running" else "stopped"


def store_desired(journal: Journal, desired: Desired) -> None:
    journal.put(_KEY_DESIRED, desired)


@dataclass
class _Waiting:
    """A soft restart waiting for busy sessions: why, for which server, since when."""

    reason: RestartReason
    record: ProcessRecord
    started: float
    sessions: list[str]
    stop: bool = False  # a stop that waits (a live restore's), not a restart


def backoff_delay(attempt: int, *, initial: float, cap: float, jitter: float) -> float:
    """Delay before automatic restart number ``attempt`` (1-based).

    Exponential, capped, with "equal jitter": ``jitter`` in [0, 1] picks a point
    between half and all of the capped delay, so restarts of many servers spread.
    """
    base = min(cap, initial * (2 ** max(attempt - 1, 0)))
    return float(base / 2 + base / 2 * jitter)


class Supervisor:
    """Owns the OpenCode server process of one host.

    >>> # sup = Supervisor(settings, journal); await sup.run()  (in the agent)
    """

    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.layout = Layout(settings.home).ensure()
        self.journal = journal
        self.versions = Versions(self.layout.opencode_prefix, VersionStore(journal.db))
        self._now = monotonic
        self._rng = rng
        self.counters = Counters()
        self.request_observers: list[RequestObserver] = []
        self._lock = asyncio.Lock()
        self._state = ServerState.STOPPED
        self._spawned: Spawned | None = None
        self._record: ProcessRecord | None = None
        self._version: str | None = None
        self._healthy = False
        self._unready_detail = ""
        self._probe_failures = 0
        self._running_since: float | None = None
        self._over_memory_since: float | None = None
        self._consecutive = 0
        self._auto_restarts: deque[float] = deque()
        self._restart_task: asyncio.Task[None] | None = None
        self._next_restart_at: float | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self._watch_fd: int | None = None
        self._last_exit: ExitInfo | None = None
        self._last_error: str | None = None
        self._ready_event = asyncio.Event()
        self._busy = BusySessions()
        self._status_answer: SessionStatusAnswer | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._waiting: _Waiting | None = None
        self._drain_task: asyncio.Task[None] | None = None
        password = read_or_create_secret(self.layout.server_password_file)
        self.credentials = Credentials(settings.opencode_username, password)
        self.client = AsyncOpenCodeClient(
            settings.opencode_base_url, self.credentials, timeout=settings.probe_timeout
        )

    # ---- what the outside sees -------------------------------------------------

    @property
    def desired(self) -> Desired:
        return stored_desired(self.journal)

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def record(self) -> ProcessRecord | None:
        """The live server process, when there is one."""
        return self._record

    @property
    def ready(self) -> bool:
        return self._state is ServerState.RUNNING and self._healthy

    @property
    def readiness_detail(self) -> str:
        """Why the server is not ready: its latest failed or late probe, or error."""
        if self.ready:
            return ""
        if self._state is ServerState.RUNNING and self._unready_detail:
            return self._unready_detail
        return self._last_error or ""

    def status(self) -> ServerStatus:
        record = self._record
        uptime = time.time() - record.create_time if record else 0.0
        next_in = None
        if self._next_restart_at is not None:
            next_in = max(0.0, self._next_restart_at - self._now())
        return ServerStatus(
            state=self._state,
            desired=self.desired,
            pid=record.pid if record else None,
            version=self._version,
            host=self.settings.opencode_host,
            port=self.settings.opencode_port,
            url=self.settings.opencode_base_url,
            username=self.settings.opencode_username,
            healthy=self.ready,
            uptime_seconds=round(max(uptime, 0.0), 3),
            restarts=int(self.journal.get(_KEY_RESTARTS, "0") or 0),
            last_exit=self._last_exit.describe() if self._last_exit else None,
            last_error=self._last_error,
            next_restart_in=next_in,
            rss_bytes=tree_rss(record) if record else None,
            busy_sessions=self._busy.ids(),
            pending_restart=self._pending(),
        )

    def recent_session_status(self, max_age: float) -> SessionStatusAnswer | None:
        """The latest answer of ``GET /session/status`` (asked at every probe), if it
        came at most ``max_age`` seconds ago from the server that runs now: the
        sampler and the usage tracker take it instead of asking again. Safe to call
        from another thread (one reference, replaced whole)."""
        answer = self._status_answer
        if answer is None or self._now() - answer.at > max_age:
            return None
        return answer

    def _pending(self) -> PendingRestart | None:
        waiting = self._waiting
        if waiting is None:
            return None
        waited = self._now() - waiting.started
        return PendingRestart(
            reason=waiting.reason.value,
            sessions=list(waiting.sessions),
            waiting_seconds=round(waited, 1),
            timeout_in=round(max(0.0, self.settings.drain_timeout - waited), 1),
        )

    # ---- operator actions ------------------------------------------------------

    async def start(self, wait: bool = True) -> ActionResult:
        """Start the server (an operator's start also clears ``fatal``)."""
        async with self._lock:
            self.journal.put(_KEY_FATAL, "")
            if self._state in (ServerState.RUNNING, ServerState.STARTING):
                self._set_desired("running")
                return self._result(True, "the server is already running")
            self._cancel_restart()
            self._consecutive = 0
            self._auto_restarts.clear()
            try:
                await self._spawn()
            except NexusOpsError as exc:
                self._state = ServerState.STOPPED
                self._last_error = exc.message
                raise
            self._set_desired("running")
        return await self._after_start(wait, "started")

    async def stop(
        self, when_idle: bool = False, reason: RestartReason = RestartReason.OPERATOR
    ) -> ActionResult:
        """Stop the server and keep it stopped (the restart policy will not undo it).

        With ``when_idle`` it first waits, as a soft restart does, until no session is
        busy, at most ``NEXUS_DRAIN_TIMEOUT`` (a live restore stops the server so), and
        returns once the server is stopped."""
        if when_idle:
            await self._drain_before_stop(reason)
        async with self._lock:
            self._set_desired("stopped")
            self.journal.put(_KEY_FATAL, "")
            self._cancel_restart()
            self._cancel_waiting("the server was stopped")
            survivors = await self._terminate(reason)
            self._state = ServerState.STOPPED
        message = "stopped" if not survivors else f"stopped; survivors: {survivors}"
        return self._result(not survivors, message, survivors)

    async def restart(self, wait: bool = True, when_idle: bool = False) -> ActionResult:
        """Stop and start the server (counted as a restart by the operator): now, or with
        ``when_idle`` once no session is busy (at most ``NEXUS_DRAIN_TIMEOUT`` later).

        A restart that has to wait returns at once, saying for which sessions."""
        if when_idle:
            waiting = await self._wait_for_idle(RestartReason.OPERATOR)
            if waiting is not None:
                return self._result(True, waiting)
        async with self._lock:
            self._cancel_waiting("an operator restarted the server at once")
            self._cancel_restart()
            self.journal.put(_KEY_FATAL, "")
            await self._terminate(RestartReason.OPERATOR)
            self._count_restart(RestartReason.OPERATOR)
            try:
                await self._spawn()
            except NexusOpsError as exc:
                self._state = ServerState.STOPPED
                self._last_error = exc.message
                raise
            self._set_desired("running")
        return await self._after_start(wait, "restarted")

    async def _after_start(self, wait: bool, verb: str) -> ActionResult:
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready_event.wait(), self.settings.start_timeout)
        ok = self.ready or not wait
        return self._result(ok, verb if ok else f"{verb}, but not healthy yet")

    def _result(self, ok: bool, message: str, survivors: list[int] | None = None) -> ActionResult:
        return ActionResult(ok=ok, message=message, status=self.status(), survivors=survivors or [])

    def _set_desired(self, desired: Desired) -> None:
        store_desired(self.journal, desired)

    # ---- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Recover (adopt or apply the desired state), then watch until cancelled."""
        await self._recover()
        interval = self.settings.probe_interval
        next_tick = self._now() + interval
        while True:
            # A fixed rate: a probe that times out does not stretch the interval,
            # so a hung server is declared after about probe_failures intervals.
            await asyncio.sleep(max(0.0, next_tick - self._now()))
            next_tick = max(next_tick + interval, self._now())
            try:
                await self._tick()
            except NexusOpsError as exc:
                log.warning("supervision tick failed: %s", exc)

    async def shutdown(self, stop_server: bool = False) -> None:
        """Leave the server running (unless asked) and release what the agent holds."""
        self._cancel_restart()
        self._cancel_waiting("the agent stopped")
        if self._ready_task is not None:
            self._ready_task.cancel()
        if stop_server:
            await self.stop()
        self._unwatch()
        await self.client.aclose()

    async def _recover(self) -> None:
        async with self._lock:
            record = load_record(self.layout.server_pidfile)
            problem = await self._adoption_problem(record) if record is not None else None
            if record is not None and problem is None:
                self._adopt(record)
                return
            if record is not None:
                self.journal.record(
                    EventKind.STALE_PIDFILE,
                    pid=record.pid,
                    message=f"{problem}; not adopted, not signalled",
                )
                remove_record(self.layout.server_pidfile)
            orphan = await self._orphaned_server()
            if orphan is not None and await self._adoption_problem(orphan) is None:
                save_record(self.layout.server_pidfile, orphan)
                self._adopt(orphan, "adopted a running server that had no pidfile")
                return
            if self.journal.get(_KEY_FATAL):
                self._state = ServerState.FATAL
            elif self.desired == "running":
                await self._spawn_or_backoff(RestartReason.CRASH)

    async def _adoption_problem(self, record: ProcessRecord) -> str | None:
        """Why the pidfile's process is not a server to adopt; None when it is.

        A server the previous agent started a moment before it died may not listen
        yet: it gets ``start_timeout`` to open its port.
        """
        binary = self._binary()
        port = self.settings.opencode_port
        deadline = self._now() + self.settings.start_timeout
        while (problem := await asyncio.to_thread(server_problem, record, binary)) is None:
            if await asyncio.to_thread(listens_on, record, port):
                return None
            if self._now() >= deadline:
                return f"pid {record.pid} does not listen on port {port}"
            await asyncio.sleep(0.2)
        return problem

    def _binary(self) -> Path | None:
        """The configured OpenCode binary; None when it cannot be found."""
        try:
            return self.versions.select(self.settings).binary
        except NexusOpsError:
            return None

    async def _orphaned_server(self) -> ProcessRecord | None:
        return await asyncio.to_thread(
            orphaned_server, self.settings.opencode_port, self._binary(), self.credentials.password
        )

    def _adopt(self, record: ProcessRecord, message: str = "adopted a running server") -> None:
        self._record = record
        self._spawned = None
        self._state = ServerState.RUNNING
        self._healthy, self._unready_detail = False, "adopted; waiting for its first probe"
        self._running_since = self._now()
        self._watch(record)
        self.journal.record(EventKind.ADOPT, pid=record.pid, message=message)
        self._set_desired("running")

    async def _tick(self) -> None:
        logs.rotate_if_needed(
            self.layout.server_log, self.settings.log_max_bytes, self.settings.log_backups
        )
        record = self._record
        if self._state is not ServerState.RUNNING or record is None:
            return
        # Belt and braces where pidfd is missing (with it, an exit is seen at once and
        # a second's look at /proc would only cost).
        if self._watch_fd is None and find_live(record) is None:
            await self._on_exit(record)
            return
        await self._probe(record)
        self._check_memory(record)
        self._poll_sessions_soon()
        if (
            self._running_since is not None
            and self._now() - self._running_since >= self.settings.stable_period
        ):
            self._consecutive = 0

    async def _probe(self, record: ProcessRecord) -> None:
        """One liveness probe. Readiness drops as soon as the server is late to answer
        (``ready_timeout``); the restart waits for ``probe_failures`` failed probes."""
        settings = self.settings
        late = asyncio.get_running_loop().call_later(
            settings.ready_timeout,
            self._not_ready,
            f"no answer to the probe within {settings.ready_timeout:g} s",
        )
        try:
            health = await self._timed_health()
        except OpenCodeUnavailable as exc:
            late.cancel()  # said below, and a restart may follow
            self._probe_failures += 1
            self._not_ready(
                f"{exc} ({self._probe_failures} of {settings.probe_failures} failed probes "
                "before a restart)"
            )
            if self._probe_failures >= settings.probe_failures:
                await self._restart_unhealthy(record, RestartReason.HANG, str(exc))
            return
        finally:
            late.cancel()
        self._probe_failures = 0
        self._healthy, self._unready_detail = True, ""
        self._version = health.version

    def _not_ready(self, detail: str) -> None:
        self._healthy, self._unready_detail = False, detail

    async def _timed_health(self, observe: bool = True) -> Health:
        # httpx applies probe_timeout to connect and to every read: a hung (or
        # SIGSTOPped) server that accepts but never answers fails in that time.
        if not observe:
            return await self.client.health()
        started = time.perf_counter()
        try:
            health = await self.client.health()
        except OpenCodeUnavailable:
            self._observe("/global/health", time.perf_counter() - started, False)
            raise
        self._observe("/global/health", health.seconds, True)
        return health

    def _observe(self, path: str, seconds: float, ok: bool) -> None:
        for observer in self.request_observers:
            observer(path, seconds, ok)

    def _check_memory(self, record: ProcessRecord) -> None:
        """Over the hard limit: restart at once. Over the soft one for
        ``memory_limit_duration``: restart once no session is busy."""
        soft, hard = self.settings.memory_limit_mb, self.settings.memory_hard_limit_mb
        if not soft and not hard:
            return
        rss = tree_rss(record) or 0
        if hard and rss > hard * _MIB:
            self._over_memory_since = None
            detail = f"resident memory {rss // _MIB} MiB over the hard limit of {hard} MiB"
            self._in_background(self._restart_unhealthy(record, RestartReason.MEMORY, detail))
            return
        if not soft or rss <= soft * _MIB:
            self._over_memory_since = None
            return
        if self._waiting is not None:
            return  # a restart already waits for the busy sessions
        if self._over_memory_since is None:
            self._over_memory_since = self._now()
        elif self._now() - self._over_memory_since >= self.settings.memory_limit_duration:
            self._over_memory_since = None
            detail = f"resident memory {rss // _MIB} MiB over {soft} MiB"
            self._in_background(self._soft_memory_restart(record, detail))

    async def _soft_memory_restart(self, record: ProcessRecord, detail: str) -> None:
        self.journal.record(
            EventKind.MEMORY_LIMIT,
            reason=RestartReason.MEMORY.value,
            pid=record.pid,
            message=f"{detail}; restarting once no session is busy",
        )
        if await self._wait_for_idle(RestartReason.MEMORY) is None:
            async with self._lock:
                if self._record == record:
                    await self._terminate(RestartReason.MEMORY)
                    await self._schedule_restart(RestartReason.MEMORY)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        task.add_done_callback(_log_failure)
        return task

    # ---- busy sessions and soft restarts ---------------------------------------------

    def _poll_sessions_soon(self) -> None:
        """Ask for the busy sessions beside the probes (never in their way); a waiting
        restart asks by itself."""
        if self._waiting is not None or not self._healthy:
            return
        if self._poll_task is None or self._poll_task.done():
            self._poll_task = self._in_background(self._poll_quietly())

    async def _poll_quietly(self) -> None:
        await self._poll_sessions()

    async def _poll_sessions(self) -> list[str] | None:
        """The busy sessions now (and remember since when); None if the server did not say."""
        record, started = self._record, time.perf_counter()
        try:
            statuses = await self.client.session_status()
        except OpenCodeUnavailable as exc:
            log.debug("session status: %s", exc)
            return None
        if self._record is None:
            return []
        if self._record == record:  # not an answer of a server since replaced
            seconds = time.perf_counter() - started
            self._status_answer = SessionStatusAnswer(statuses, self._now(), seconds)
        return self._busy.update(statuses, self._now())

    async def _drain_before_stop(self, reason: RestartReason) -> None:
        """Wait until no session is busy or the drain limit passed; a waiting restart
        gives way (the stop ends that server anyway)."""
        if self._waiting is not None:
            self._cancel_waiting(f"a {reason.value} stop waits for the busy sessions instead")
        if await self._wait_for_idle(reason, stop=True) is not None and self._drain_task:
            await asyncio.wait({self._drain_task})  # ends drained, timed out, or cancelled

    async def _wait_for_idle(self, reason: RestartReason, stop: bool = False) -> str | None:
        """Start waiting for the busy sessions before a restart (or a ``stop``); say so,
        or return None when it may go ahead now (none busy, no server, or it does not say)."""
        if self._waiting is not None:
            waiting = self._waiting
            return f"a restart is already waiting for {describe_sessions(waiting.sessions)}"
        record = self._record
        if record is None or self._state is not ServerState.RUNNING:
            return None
        busy = await self._poll_sessions()
        if not busy or self._record != record:
            return None
        if self._waiting is not None:  # another one began while we asked
            return f"a restart is already waiting for {describe_sessions(self._waiting.sessions)}"
        self._waiting = _Waiting(reason, record, self._now(), busy, stop)
        limit = self.settings.drain_timeout
        what = f"{reason.value} stop" if stop else "restart"
        self.journal.record(
            EventKind.RESTART_WAITING,
            reason=reason.value,
            pid=record.pid,
            message=f"{what} waits for {len(busy)} busy session(s): {describe_sessions(busy)} "
            f"(at most {limit:g} s, NEXUS_DRAIN_TIMEOUT)",
            details={"sessions": busy, "drain_timeout": limit, "stop": stop},
        )
        self._drain_task = self._in_background(self._drain(self._waiting))
        return (
            f"{what} waiting for {len(busy)} busy session(s): {describe_sessions(busy)}; it goes "
            f"ahead once they are idle, or after {limit:g} s (NEXUS_DRAIN_TIMEOUT)"
        )

    async def _drain(self, waiting: _Waiting) -> None:
        """Poll the sessions until none is busy or the drain limit passed, then restart.

        The lock is taken only for the restart, so probes, stops and hard faults are
        never delayed by the waiting; they cancel it (:meth:`_cancel_waiting`)."""
        limit = self.settings.drain_timeout
        while True:
            await asyncio.sleep(min(self.settings.probe_interval, 1.0))
            known = await self._poll_sessions()
            busy = self._busy.ids() if known is None else known
            if busy:
                waiting.sessions = busy
            outcome = decide(busy, self._now() - waiting.started, limit)
            if outcome is Drain.WAIT:
                continue
            async with self._lock:
                if self._waiting is not waiting or self._record != waiting.record:
                    return
                if outcome is Drain.DRAINED and await self._poll_sessions():
                    continue  # a prompt began in between: wait for it too
                self._waiting, self._drain_task = None, None
                self._journal_drain_end(waiting, outcome)
                await self._end_after_drain(waiting)
                return

    def _journal_drain_end(self, waiting: _Waiting, outcome: Drain) -> None:
        waited = round(self._now() - waiting.started, 1)
        pid = waiting.record.pid
        verb = "stopping" if waiting.stop else "restarting"
        if outcome is Drain.DRAINED:
            self.journal.record(
                EventKind.RESTART_DRAINED,
                reason=waiting.reason.value,
                pid=pid,
                message=f"no session busy after {waited:g} s; {verb}",
                details={"waited_seconds": waited, "sessions": waiting.sessions},
            )
            return
        cut = self._busy.durations(self._now())
        self.journal.record(
            EventKind.DRAIN_TIMEOUT,
            reason=waiting.reason.value,
            pid=pid,
            message=f"{len(cut)} session(s) still busy after {waited:g} s "
            f"(NEXUS_DRAIN_TIMEOUT): {describe_sessions(list(cut))}; {verb} anyway",
            details={"waited_seconds": waited, "sessions": list(cut), "busy_seconds": cut},
        )

    async def _end_after_drain(self, waiting: _Waiting) -> None:
        """The waited-for restart (or stop), under the lock."""
        reason = waiting.reason
        if waiting.stop:
            self._set_desired("stopped")
            await self._terminate(reason)
            self._state = ServerState.STOPPED
            return
        if reason is RestartReason.OPERATOR:
            self._cancel_restart()
            self.journal.put(_KEY_FATAL, "")
            await self._terminate(reason)
            self._count_restart(reason)
            self._set_desired("running")
            await self._spawn_or_backoff(reason)
            return
        await self._terminate(reason)
        await self._schedule_restart(reason)

    def _cancel_waiting(self, why: str) -> None:
        """Drop a waiting restart (a stop, a hard fault or an immediate restart came first)."""
        waiting, task = self._waiting, self._drain_task
        self._waiting, self._drain_task = None, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if waiting is not None:
            self.journal.record(
                EventKind.RESTART_CANCELLED,
                reason=waiting.reason.value,
                pid=waiting.record.pid,
                message=f"the restart waiting for busy sessions is dropped: {why}",
            )

    def _journal_cut_prompts(self, pid: int, reason: str) -> None:
        """Every prompt the end of server ``pid`` cut: its session, how long it was busy."""
        for session, seconds in self._busy.durations(self._now()).items():
            self.journal.record(
                EventKind.PROMPT_CUT,
                reason=reason,
                pid=pid,
                message=f"session {session} was busy for {seconds:g} s when the server went",
                details={"session": session, "busy_seconds": seconds},
            )
        self._busy.clear()

    # ---- spawning and readiness --------------------------------------------------

    async def _spawn(self) -> None:
        """Start the server process; raise on a missing binary or a taken port."""
        settings = self.settings
        selection = self.versions.select(settings)
        binary = selection.binary
        await self._port_free()
        argv = [
            str(binary),
            "serve",
            "--hostname",
            settings.opencode_host,
            "--port",
            str(settings.opencode_port),
            "--print-logs",
            "--log-level",
            "INFO",
        ]
        cwd = settings.opencode_workdir or Path.home()
        cwd = cwd if cwd.is_dir() else self.layout.home
        env = self._server_env()
        await asyncio.to_thread(make_private, self._private_paths(env))
        spawned = await asyncio.to_thread(
            spawn, argv, env, cwd, self.layout.server_log, umask=_SERVER_UMASK
        )
        save_record(self.layout.server_pidfile, spawned.record)
        if selection.version is not None:
            self.versions.store.mark_used(selection.version)
        self._spawned, self._record = spawned, spawned.record
        self._state, self._healthy, self._probe_failures = ServerState.STARTING, False, 0
        self._unready_detail = ""
        self._last_error = None
        self._ready_event.clear()
        self.counters.starts += 1
        self._watch(spawned.record)
        self.journal.record(
            EventKind.START,
            pid=spawned.record.pid,
            message=f"started {binary.name} on {settings.opencode_host}:{settings.opencode_port}",
        )
        self._ready_task = asyncio.get_running_loop().create_task(self._await_ready(spawned.record))
        self._ready_task.add_done_callback(_log_failure)

    async def _port_free(self) -> None:
        """Raise PortInUse when the server's port is taken. Just after this agent's own
        server ended, the port gets ``stop_grace`` s to be let go first: a process
        reads as exited (its main thread a zombie) while its last threads may still
        hold the socket, and a restore or an operator starts again at once."""
        host, port = self.settings.opencode_host, self.settings.opencode_port
        ended = self._last_exit.time if self._last_exit else None
        recent = ended is not None and time.time() - ended < _RECENT_EXIT
        deadline = self._now() + self.settings.stop_grace
        while True:
            try:
                await asyncio.to_thread(check_port_free, host, port)
                return
            except PortInUse:
                if not recent or self._now() >= deadline:
                    raise
            await asyncio.sleep(0.1)

    def _private_paths(self, env: dict[str, str]) -> list[Path]:
        """What the server writes that only this user may read: OpenCode's data folder,
        the files in it and in its ``log/``, and the server's log."""
        data = OpenCodeLocations.from_environ(env).data_dir
        found = [data, self.layout.server_log]
        for folder in (data, data / "log"):
            with contextlib.suppress(OSError):
                found.extend(folder.iterdir())
        return found

    def _server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        env["OPENCODE_SERVER_PASSWORD"] = self.credentials.password
        env["OPENCODE_SERVER_USERNAME"] = self.credentials.username
        # A managed server runs the version chosen here (pinned, or rolled back to):
        # OpenCode must not replace it with the newest release on its own.
        env["OPENCODE_DISABLE_AUTOUPDATE"] = "true"
        return env

    async def _await_ready(self, record: ProcessRecord) -> None:
        deadline = self._now() + self.settings.start_timeout
        while self._now() < deadline and self._is_starting(record):
            try:
                health = await self._timed_health(observe=False)
            except OpenCodeUnavailable:
                await asyncio.sleep(0.1)
                continue
            await self._mark_ready(record, health)
            return
        if self._is_starting(record):
            await self._restart_unhealthy(
                record,
                RestartReason.START_FAILED,
                f"no healthy answer within {self.settings.start_timeout:g} s of starting",
            )

    def _is_starting(self, record: ProcessRecord) -> bool:
        return self._state is ServerState.STARTING and self._record == record

    async def _mark_ready(self, record: ProcessRecord, health: Health) -> None:
        async with self._lock:
            if not self._is_starting(record):
                return
            self._version = health.version
            self._state, self._healthy, self._unready_detail = ServerState.RUNNING, True, ""
            self._running_since = self._now()
            self._ready_event.set()
            pid = self._record.pid if self._record else None
            self.journal.record(EventKind.READY, pid=pid, message=f"healthy, v{health.version}")

    # ---- exits, restarts, backoff --------------------------------------------------

    def _watch(self, record: ProcessRecord) -> None:
        self._unwatch()
        fd = pidfd(record.pid)
        if fd is None:
            return
        self._watch_fd = fd
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._exit_seen, record)

    def _unwatch(self) -> None:
        if self._watch_fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._watch_fd)
            os.close(self._watch_fd)
            self._watch_fd = None

    def _exit_seen(self, record: ProcessRecord) -> None:
        self._unwatch()
        task = asyncio.get_running_loop().create_task(self._on_exit(record))
        task.add_done_callback(_log_failure)

    async def _on_exit(self, record: ProcessRecord) -> None:
        """``record``'s process has exited (unless an operator's action came first).

        The exit may be seen while a restart holds the lock; by the time the lock is
        ours the process may have been replaced, and the new one is left alone.
        """
        async with self._lock:
            if self._record != record:
                return
            self._cancel_waiting("the server exited; it is restarted at once")
            spawned = self._spawned
            code, sig = await asyncio.to_thread(wait_status, spawned.popen if spawned else None)
            # What it forked and left behind (a port held by an orphan, say) goes too.
            await asyncio.to_thread(terminate_tree, record, self.settings.stop_grace)
            self._forget_process(
                ExitInfo(
                    pid=self._record.pid,
                    code=code,
                    signal=sig,
                    reason=RestartReason.CRASH.value,
                    time=time.time(),
                )
            )
            if self.desired == "running":
                await self._schedule_restart(RestartReason.CRASH)
            else:
                self._state = ServerState.STOPPED

    def _forget_process(self, info: ExitInfo) -> None:
        self._unwatch()
        if self._poll_task is not None:
            self._poll_task.cancel()
        self._journal_cut_prompts(info.pid, info.reason)
        self._last_exit = info
        self.counters.stops += 1
        self.journal.record(
            EventKind.EXIT,
            reason=info.reason,
            pid=info.pid,
            message=info.describe(),
            details={"code": info.code, "signal": info.signal},
        )
        self._spawned = self._record = None
        self._status_answer = None
        self._healthy = False
        self._running_since = None
        self._ready_event.clear()
        remove_record(self.layout.server_pidfile)

    async def _terminate(self, reason: RestartReason) -> list[int]:
        """Stop the current process, if any; journal it; return survivors."""
        record, spawned = self._record, self._spawned
        if record is None:
            return []
        self._unwatch()
        if self._ready_task is not None and self._ready_task is not asyncio.current_task():
            self._ready_task.cancel()
        grace = self.settings.stop_grace
        if reason is RestartReason.HANG:
            # A hung server will not finish its work; WAL keeps its database safe.
            grace = min(grace, self.settings.probe_timeout)
        survivors = await asyncio.to_thread(terminate_tree, record, grace)
        code, sig = await asyncio.to_thread(wait_status, spawned.popen if spawned else None)
        self._forget_process(
            ExitInfo(pid=record.pid, code=code, signal=sig, reason=reason.value, time=time.time())
        )
        self.journal.record(
            EventKind.STOP,
            reason=reason.value,
            pid=record.pid,
            message="stopped" + (f"; survivors {survivors}" if survivors else ""),
            details={"survivors": survivors},
        )
        return survivors

    async def _restart_unhealthy(
        self, record: ProcessRecord, reason: RestartReason, detail: str
    ) -> None:
        """Replace ``record``'s process, unless it has been replaced already."""
        async with self._lock:
            if self._record != record:
                return
            self._cancel_waiting(f"{reason.value}: the server is restarted at once")
            if reason is RestartReason.MEMORY:
                await self._poll_sessions()  # it still answers: name what it cuts exactly
            kind = _UNHEALTHY_EVENT[reason]
            self.journal.record(kind, reason=reason.value, pid=record.pid, message=detail)
            await self._terminate(reason)
            await self._schedule_restart(reason)

    async def _schedule_restart(self, reason: RestartReason) -> None:
        """Back off and start again, or give up (``fatal``) after too many restarts."""
        now = self._now()
        window = self.settings.restart_window
        while self._auto_restarts and now - self._auto_restarts[0] > window:
            self._auto_restarts.popleft()
        if len(self._auto_restarts) >= self.settings.restart_limit:
            self._state = ServerState.FATAL
            self.journal.put(_KEY_FATAL, "1")
            self.journal.record(
                EventKind.FATAL,
                reason=reason.value,
                message=f"{len(self._auto_restarts)} automatic restarts within {window:g} s; "
                "not trying again until an operator starts the server",
            )
            return
        self._auto_restarts.append(now)
        self._consecutive += 1
        delay = backoff_delay(
            self._consecutive,
            initial=self.settings.backoff_initial,
            cap=self.settings.backoff_max,
            jitter=self._rng(),
        )
        self._state = ServerState.BACKOFF
        self._next_restart_at = now + delay
        self._restart_task = asyncio.get_running_loop().create_task(
            self._restart_after(delay, reason)
        )

    async def _restart_after(self, delay: float, reason: RestartReason) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            self._next_restart_at = None
            self._restart_task = None
            if self._state is not ServerState.BACKOFF or self.desired != "running":
                return
            self._count_restart(reason)
            await self._spawn_or_backoff(reason)

    async def _spawn_or_backoff(self, reason: RestartReason) -> None:
        try:
            await self._spawn()
        except NexusOpsError as exc:
            self._last_error = exc.message
            self.journal.record(EventKind.START_FAILED, reason=reason.value, message=str(exc))
            await self._schedule_restart(RestartReason.START_FAILED)

    def _count_restart(self, reason: RestartReason) -> None:
        total = int(self.journal.get(_KEY_RESTARTS, "0") or 0) + 1
        self.journal.put(_KEY_RESTARTS, str(total))
        by_reason = self.counters.restarts_by_reason
        by_reason[reason.value] = by_reason.get(reason.value, 0) + 1
        self.journal.record(EventKind.RESTART, reason=reason.value, message=f"restart #{total}")

    def _cancel_restart(self) -> None:
        if self._restart_task is not None:
            self._restart_task.cancel()
            self._restart_task = None
        self._next_restart_at = None
        if self._state in (ServerState.BACKOFF, ServerState.FATAL):
            self._state = ServerState.STOPPED


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("supervisor task failed", exc_info=task.exception())
