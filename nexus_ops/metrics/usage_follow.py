"""Following the server's usage: its event stream for what happens, its API for the rest.

On every connection to ``GET /global/event`` (at start, and again after the stream
dropped or the server restarted) the tracker lists the sessions of every project
(``GET /experimental/session``, archived ones too, a page at a time; the busy ones
from ``GET /session/status``, or the supervisor's answer of it when at most
``status_max_age`` seconds old) and counts again, from its
messages (``GET /session/{id}/message``), every session that it does not know or
whose listed totals differ from what it counted. The first pass after the agent
starts therefore counts the work done before it; later passes only the sessions
that changed while the stream was down (or in another process on the same data).
The same check runs every ``check_interval`` seconds while connected, listing only
the sessions updated since a minute before the last check (``start=``): no
messages unless a session's totals differ. Between checks, the events
alone keep the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from nexus_ops.errors import NexusOpsError
from nexus_ops.metrics.usage import UsageLedger
from nexus_ops.models import SessionStatusAnswer

log = logging.getLogger(__name__)

# Every session of every project (``GET /session`` lists only the server's own project).
SESSIONS = "/experimental/session"
PAGE = 200
CHECK_MARGIN = 60.0  # seconds before the last check that the next one lists again
# Events the ledger has no use for, passed over undecoded: one a streamed token
# (more than half of all events under load), and the server's replication records.
UNUSED_EVENTS = (b'"type":"message.part.delta"', b'"type":"sync"')


class UsageApi(Protocol):
    """What the tracker asks the server (AsyncOpenCodeClient has it)."""

    async def get(self, path: str) -> Any: ...

    def events(
        self, path: str = ..., silence: float = ..., skip: tuple[bytes, ...] = ...
    ) -> Any: ...


class Readiness(Protocol):
    @property
    def ready(self) -> bool: ...

    def recent_session_status(self, max_age: float) -> SessionStatusAnswer | None: ...


class UsageTracker:
    """Keeps ``ledger`` up to date with the server behind ``client`` until cancelled."""

    def __init__(
        self,
        client: UsageApi,
        server: Readiness,
        ledger: UsageLedger | None = None,
        check_interval: float = 30.0,
        retry_interval: float = 2.0,
        status_max_age: float = 0.0,
    ) -> None:
        self.client = client
        self.server = server
        self.ledger = ledger or UsageLedger()
        self.check_interval = check_interval
        self.retry_interval = retry_interval
        self.status_max_age = status_max_age  # 0: always ask GET /session/status here
        self.connected = False
        self.synced = False  # a check has completed since the stream connected
        self.counted = False  # a check has completed since the agent started
        self.connections = 0
        self.scans = 0  # sessions counted again from their messages

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """The ledger's series once the sessions have been counted: before that, its
        counters would hold only what the events brought and look reset to zero."""
        return self.ledger.samples() if self.counted else []

    async def run(self) -> None:
        while True:
            if self.server.ready:
                try:
                    await self.follow()
                except NexusOpsError as exc:
                    log.info("usage: the event stream dropped: %s", exc)
                except Exception:  # a bug in one event must not stop the counting
                    log.exception("usage: following the event stream failed")
                finally:
                    self.connected = self.synced = False
            await asyncio.sleep(self.retry_interval)

    async def follow(self) -> None:
        """Read the event stream until it ends, checking the sessions meanwhile."""
        checks: asyncio.Task[None] | None = None
        stream = self.client.events(skip=UNUSED_EVENTS)
        try:
            async for event in stream:
                payload = event.get("payload", event)  # /global/event wraps each event
                if not isinstance(payload, Mapping):
                    continue
                if payload.get("type") == "server.connected" and checks is None:
                    self.connected = True
                    self.connections += 1
                    checks = asyncio.create_task(self._check_loop())
                self.ledger.feed(payload)
        finally:
            if checks is not None:
                checks.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await checks
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _check_loop(self) -> None:
        since: float | None = None  # the first check of a connection lists every session
        while True:
            started = time.time()
            try:
                await self.check(since)
                self.synced = self.counted = True
                since = started - CHECK_MARGIN
            except NexusOpsError as exc:
                log.info("usage: checking the sessions failed: %s", exc)
            await asyncio.sleep(self.check_interval)

    async def check(self, since: float | None = None) -> None:
        """Count again every listed session whose totals differ from the ledger's; with
        ``since`` (epoch seconds), only the sessions updated since then are listed."""
        shared = (
            self.server.recent_session_status(self.status_max_age)
            if self.status_max_age > 0
            else None
        )
        statuses = shared.statuses if shared else await self.client.get("/session/status")
        if isinstance(statuses, Mapping):
            self.ledger.settle(
                {
                    str(sid)
                    for sid, status in statuses.items()
                    if isinstance(status, Mapping) and status.get("type") in ("busy", "retry")
                }
            )
        for session in await self.sessions(since):
            if self.ledger.needs_scan(session):
                messages = await self.client.get(f"/session/{session['id']}/message")
                if isinstance(messages, list):
                    self.ledger.replace_session(session, messages)
                    self.scans += 1
            else:
                self.ledger.describe(session)

    async def sessions(self, since: float | None = None) -> list[Mapping[str, Any]]:
        """Every session of every project, archived ones too (updated since ``since``,
        epoch seconds, if given: ``start`` is inclusive), a page at a time (most recently
        updated first; the next page up to the last one's update: ``cursor`` is
        exclusive)."""
        found: dict[str, Mapping[str, Any]] = {}
        cursor: float | None = None
        while True:
            query = f"{SESSIONS}?archived=true&limit={PAGE}"
            query += f"&start={since * 1000:.0f}" if since is not None else ""
            page = await self.client.get(query + (f"&cursor={cursor:.0f}" if cursor else ""))
            rows = (
                [r for r in page if isinstance(r, Mapping) and r.get("id")]
                if isinstance(page, list)
                else []
            )
            new = [r for r in rows if str(r["id"]) not in found]
            found.update((str(r["id"]), r) for r in new)
            if len(rows) < PAGE or not new:
                return list(found.values())
            last = (rows[-1].get("time") or {}).get("updated")
            if not isinstance(last, int | float):
                return list(found.values())
            cursor = last + 1  # the cursor is exclusive: sessions updated in the same ms too
