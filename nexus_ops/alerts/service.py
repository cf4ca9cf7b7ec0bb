"""The agent's alert evaluator: rules over the sampler's readings, states, journal, webhooks.

Every ``NEXUS_ALERT_INTERVAL`` seconds it takes the sampler's latest reading
(and the request durations it has observed since), evaluates every rule, steps
each alert's state, writes each change to the journal (kind ``alert``, the new
state as its reason) and sends ``firing`` and ``resolved`` to the webhooks. The
states are kept in the journal's state table, so an agent that restarts does
not notify a firing alert twice.

>>> # service = AlertService.from_settings(settings, journal)
>>> # await service.run(lambda: sampler.latest, supervisor.request_observers)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from pydantic import Field, ValidationError

from nexus_ops.alerts.engine import AlertStateName, AlertTrack, TrackState, Transition
from nexus_ops.alerts.notify import (
    Grouping,
    NotificationRecord,
    Notifier,
    ReceiverStatus,
    Webhook,
)
from nexus_ops.alerts.rules import AlertRule, AlertsConfig, format_duration, load_config
from nexus_ops.alerts.window import SeriesWindow
from nexus_ops.config import Settings
from nexus_ops.errors import NexusOpsError
from nexus_ops.metrics import catalogue as m
from nexus_ops.models import Frozen
from nexus_ops.store import Journal

log = logging.getLogger(__name__)
ALERT_EVENT = "alert"
STATE_KEY = "alerts.tracks"
REQUEST_METRIC = m.REQUEST_DURATION.metric
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


class ReadingLike(Protocol):
    """What the evaluator reads of a sampler reading."""

    @property
    def time(self) -> float: ...

    @property
    def values(self) -> Iterable[tuple[str, Mapping[str, str], float]]: ...


RequestObserver = Callable[[str, float, bool], None]


class RuleStatus(Frozen):
    """One rule and the state of its alert."""

    rule: AlertRule
    expression: str
    state: AlertStateName
    since: float | None = None
    value: float | None = None
    active_since: float | None = None
    fired_at: float | None = None
    resolved_at: float | None = None
    flapping: bool = False


class AlertsView(Frozen):
    """Every rule with its state, the receivers' delivery status, recent notifications."""

    evaluated_at: float | None = Field(None, description="Unix time of the last evaluation.")
    interval: float
    rules: list[RuleStatus]
    receivers: list[ReceiverStatus]
    recent: list[NotificationRecord]


class AlertService:
    """Evaluates the rules of one agent (see the module's docstring).

    >>> from pathlib import Path
    >>> from nexus_ops.store import Database
    >>> rule = AlertRule(name="Down", metric="opencode_server_status", op="<", value=1)
    >>> service = AlertService(AlertsConfig(rules=[rule]), Journal(Database(Path(":memory:"))))
    >>> service.window.add_reading(time.time(), [("opencode_server_status", {}, 0.0)])
    >>> [t.to for t in service.evaluate()]
    ['firing']
    """

    def __init__(
        self,
        config: AlertsConfig,
        journal: Journal,
        *,
        interval: float = 5.0,
        sample_interval: float = 5.0,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        grouping: Grouping | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = list(config.rules)
        self.journal = journal
        self.interval = interval
        self.evaluated_at: float | None = None
        longest = max([r.window for r in self.rules] + [60.0])
        stale = max(3 * sample_interval, 2 * interval, 5.0)
        self.window = SeriesWindow(keep=longest + stale, stale_after=stale)
        hooks = [Webhook.from_config(w) for w in config.webhooks]
        self.notifier = Notifier(
            hooks,
            journal,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            grouping=grouping,
            clock=clock,
        )
        self._clock = clock
        # Observations arrive from the supervisor's thread; the evaluator takes them in.
        self._inbox: deque[tuple[str, float, bool, float]] = deque(maxlen=10_000)
        self.tracks = self._restore()

    @classmethod
    def from_settings(cls, settings: Settings, journal: Journal) -> AlertService:
        return cls(
            load_config(settings),
            journal,
            interval=settings.alert_interval,
            sample_interval=settings.metrics_interval,
            timeout=settings.alert_webhook_timeout,
            retries=settings.alert_webhook_retries,
            grouping=Grouping(
                by=tuple(name for name in settings.alert_group_by.split(",") if name),
                wait=settings.alert_group_wait,
                interval=settings.alert_group_interval,
            ),
        )

    # -- inputs ------------------------------------------------------------------

    def observe_request(self, path: str, seconds: float, ok: bool) -> None:
        """A request of the agent to the server (a supervisor's request observer).

        Safe from any thread: it is only queued, for the next evaluation to take in.
        """
        self._inbox.append((path, seconds, ok, self._clock()))

    def _take_observations(self) -> None:
        while self._inbox:
            path, seconds, ok, when = self._inbox.popleft()
            labels = {"path": path, "outcome": "ok" if ok else "error"}
            self.window.observe(REQUEST_METRIC, labels, when, seconds)

    def feed(self, reading: ReadingLike | None) -> None:
        """Take the sampler's latest reading unless it was taken already."""
        if reading is not None and reading.time != self.window.latest_reading:
            self.window.add_reading(reading.time, reading.values)

    # -- evaluation ----------------------------------------------------------------

    def evaluate(self, now: float | None = None) -> list[Transition]:
        """Evaluate every rule once; journal and notify the changes."""
        now = self._clock() if now is None else now
        self._take_observations()
        changes = []
        for rule in self.rules:
            value, condition = self.condition(rule, now)
            change = self.tracks[rule.name].step(rule, condition, value, now)
            if change is not None:
                self._apply(rule, change)
                changes.append(change)
        self.evaluated_at = now
        if changes:
            self._save()
        return changes

    def condition(self, rule: AlertRule, now: float) -> tuple[float | None, bool]:
        """The rule's value now and whether its condition holds."""
        if rule.kind == "absent":
            value = None
            holds = not self.window.seen(rule.metric, rule.match, rule.window, now)
        else:
            value = self.window.value(
                rule.metric, rule.match, rule.aggregate, rule.window, rule.op, now
            )
            holds = value is not None and _COMPARE[rule.op](value, rule.value)
        if holds and rule.only_while:
            gate = self.window.value(rule.only_while, {}, "last", rule.window, ">", now)
            holds = gate == 1
        return value, holds

    def _apply(self, rule: AlertRule, change: Transition) -> None:
        shown = "" if change.value is None else f" (value {rule.format_value(change.value)})"
        if change.frm == change.to:
            message = f"{rule.name}: flapping ended, {change.notify} sent{shown}"
        else:
            message = f"{rule.name}: {change.frm} -> {change.to}{shown}: {rule.readable()}"
            if change.flapping and change.to in ("firing", "resolved"):
                message += "; flapping, not notified"
        self.journal.record(
            ALERT_EVENT,
            reason=change.to,
            message=message,
            details={
                "rule": rule.name,
                "from": change.frm,
                "to": change.to,
                "value": change.value,
                "severity": rule.severity,
                "notified": change.notify,
                "flapping": change.flapping,
            },
        )
        if change.notify is not None:
            track = self.tracks[rule.name]
            self.notifier.send(rule, change.notify, change.value, track.active_since)

    # -- state that outlives the agent -------------------------------------------------

    def _restore(self) -> dict[str, AlertTrack]:
        tracks = {rule.name: AlertTrack() for rule in self.rules}
        with contextlib.suppress(NexusOpsError, ValueError, TypeError, ValidationError):
            saved = json.loads(self.journal.get(STATE_KEY) or "{}")
            for name, state in saved.items():
                if name in tracks:
                    tracks[name] = AlertTrack.restore(TrackState.model_validate(state))
        return tracks

    def _save(self) -> None:
        saved = {name: t.snapshot().model_dump(mode="json") for name, t in self.tracks.items()}
        self.journal.put(STATE_KEY, json.dumps(saved, sort_keys=True))

    # -- the loop and the view ------------------------------------------------------

    async def run(
        self, latest: Callable[[], ReadingLike | None], observers: list[RequestObserver]
    ) -> None:
        """Evaluate every ``interval`` seconds until cancelled; then finish the deliveries."""
        observers.append(self.observe_request)
        try:
            while True:
                started = time.monotonic()
                try:
                    self.feed(latest())
                    self.evaluate()
                except NexusOpsError as exc:  # a full disk must not stop the evaluation
                    log.warning("alerts: %s", exc)
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            with contextlib.suppress(ValueError):
                observers.remove(self.observe_request)
            await self.notifier.drain()

    def view(self) -> AlertsView:
        """Every rule and its state, for the API."""
        rules = []
        for rule in self.rules:
            track = self.tracks[rule.name]
            rules.append(
                RuleStatus(
                    rule=rule,
                    expression=rule.describe(),
                    state=track.state,
                    since=track.since,
                    value=track.value,
                    active_since=track.active_since,
                    fired_at=track.fired_at,
                    resolved_at=track.resolved_at,
                    flapping=track.flapping,
                )
            )
        return AlertsView(
            evaluated_at=self.evaluated_at,
            interval=self.interval,
            rules=rules,
            receivers=self.notifier.statuses(),
            recent=list(self.notifier.recent),
        )


def describe_rule_status(status: RuleStatus) -> str:
    """One line for `nexus-ops alerts list`."""
    value = "-" if status.value is None else status.rule.format_value(status.value)
    since = ""
    if status.since is not None:
        since = f" for {format_duration(max(0.0, time.time() - status.since))}"
    flap = " (flapping)" if status.flapping else ""
    return f"{status.rule.name:<28} {status.state + since + flap:<22} {value:>12}  {status.rule.readable()}"
