"""Busy sessions, and whether a soft restart may go ahead.

A soft restart (the soft memory limit, an operator's ``restart --when-idle``) waits
until no session of the server is busy, at most ``NEXUS_DRAIN_TIMEOUT`` seconds; a
hard fault (an exit, a hang, the hard memory limit) restarts at once. Either way the
supervisor has to know which sessions are busy and since when: :class:`BusySessions`
keeps that from the server's ``GET /session/status`` answers (a session busy or
retrying its model counts as busy; one that is idle is left out of the answer), and
:func:`decide` says whether a waiting restart waits on, goes ahead, or gives up.

>>> busy = BusySessions()
>>> busy.update({"ses_1": {"type": "busy"}, "ses_2": {"type": "idle"}}, now=10.0)
>>> busy.ids(), busy.durations(now=12.5)
(['ses_1'], {'ses_1': 2.5})
>>> decide(busy.ids(), waited=3.0, limit=600.0).value
'wait'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

BUSY_TYPES = frozenset({"busy", "retry"})


class Drain(StrEnum):
    """What a waiting restart does next."""

    WAIT = "wait"  # sessions are busy and the drain limit has not passed
    DRAINED = "drained"  # no session is busy: restart now
    TIMEOUT = "timeout"  # the limit passed: restart anyway, cutting the busy sessions


def decide(busy: Sequence[str], waited: float, limit: float) -> Drain:
    """The next step of a restart that has waited ``waited`` s of at most ``limit`` s.

    >>> decide([], waited=0.0, limit=10.0).value, decide(["s"], waited=10.0, limit=10.0).value
    ('drained', 'timeout')
    """
    if not busy:
        return Drain.DRAINED
    return Drain.TIMEOUT if waited >= limit else Drain.WAIT


def busy_in(statuses: Mapping[str, Any]) -> list[str]:
    """The ids of the busy sessions in an answer of ``GET /session/status``, sorted."""
    return sorted(
        str(session)
        for session, status in statuses.items()
        if isinstance(status, Mapping) and status.get("type") in BUSY_TYPES
    )


@dataclass
class BusySessions:
    """Which sessions are busy and since when (the first answer that showed them busy,
    so a duration may be short by up to one poll)."""

    since: dict[str, float] = field(default_factory=dict)

    def update(self, statuses: Mapping[str, Any], now: float) -> list[str]:
        """Take a new answer of ``GET /session/status``; return the busy sessions."""
        busy = busy_in(statuses)
        self.since = {session: self.since.get(session, now) for session in busy}
        return busy

    def ids(self) -> list[str]:
        return sorted(self.since)

    def durations(self, now: float) -> dict[str, float]:
        """Seconds each busy session has been busy, to a tenth."""
        return {session: round(max(0.0, now - at), 1) for session, at in sorted(self.since.items())}

    def clear(self) -> None:
        self.since = {}


def describe_sessions(sessions: Sequence[str], most: int = 5) -> str:
    """``ses_a, ses_b`` (and how many more, past ``most``).

    >>> describe_sessions(["a", "b", "c"], most=2)
    'a, b and 1 more'
    """
    shown = ", ".join(sessions[:most])
    rest = len(sessions) - most
    return f"{shown} and {rest} more" if rest > 0 else shown
