"""Scheduled backups: a cron expression (croniter) and the agent's loop that follows it.

>>> from datetime import datetime
>>> next_run("0 2 * * *", datetime(2026, 11, 28, 1, 30))
datetime.datetime(2026, 11, 28, 2, 0)
>>> next_run("off", datetime(2026, 11, 28, 1, 30)) is None
True
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from croniter import croniter

from nexus_ops.errors import BackupError, NexusOpsError

log = logging.getLogger(__name__)
OFF = ("", "off")


def next_run(expression: str, after: datetime) -> datetime | None:
    """The first time strictly after ``after`` that ``expression`` names; None when off."""
    if expression.strip().lower() in OFF:
        return None
    if not croniter.is_valid(expression):
        raise BackupError(
            f"backup schedule {expression!r} is not a cron expression",
            hint="set NEXUS_BACKUP_SCHEDULE, e.g. '0 2 * * *' (daily at 02:00)",
        )
    value = croniter(expression, after).get_next(datetime)
    assert isinstance(value, datetime)
    return value


class BackupScheduler:
    """Runs ``job`` at every time of ``expression`` (local time) until cancelled.

    A failing job is logged (the job itself records it in the journal) and the
    schedule carries on. ``now`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        expression: str,
        job: Callable[[], Awaitable[object]],
        now: Callable[[], datetime] = datetime.now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.expression = expression
        self.job = job
        self._now = now
        self._sleep = sleep
        self.next_at: datetime | None = None
        self.runs = 0
        self.failures = 0

    async def run(self) -> None:
        while True:
            self.next_at = next_run(self.expression, self._now())
            if self.next_at is None:
                log.info("scheduled backups are off")
                return
            await self._sleep_until(self.next_at)
            await self.run_once()

    async def _sleep_until(self, when: datetime) -> None:
        # Sleep in slices so that a suspended host or a clock change is noticed.
        while (left := (when - self._now()).total_seconds()) > 0:
            await self._sleep(min(left, 60.0))

    async def run_once(self) -> None:
        started = time.monotonic()
        try:
            await self.job()
            self.runs += 1
            log.info("scheduled backup done in %.1f s", time.monotonic() - started)
        except NexusOpsError as exc:
            self.failures += 1
            log.error("scheduled backup failed: %s", exc)
        except Exception:
            self.failures += 1
            log.exception("scheduled backup failed")
