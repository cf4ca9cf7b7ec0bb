"""Notifications: an Alertmanager-style JSON POST to each webhook, retried, never lost silently.

Notifications are grouped like Alertmanager's: alerts whose ``group_by`` labels
agree form a group, and each receiver gets one notification per group (every
alert of the group that changed since its last one), at the earliest
``group_wait`` seconds after the group's first change and ``group_interval``
seconds after its previous notification. Each receiver has one worker that sends
one notification at a time, so a receiver that hangs holds only its own worker;
changes that arrive meanwhile merge into its pending groups (an alert's latest
state wins), so what waits is bounded by the alerts, not by their changes.

Each delivery has a deadline (the receiver's timeout, for the whole request) and is retried with a doubling backoff on a network
error, a timeout, HTTP 408, 429 or 5xx (other 4xx answers are final). A
delivery that still fails is written to the journal (``alert_delivery_failed``,
with the masked URL, the attempts and the error) and counted in the receiver's
status; so is one cut short by the agent stopping. URLs are shown only through
:func:`~nexus_ops.redact.mask_url`; tokens and headers never.

The body follows Alertmanager's webhook format (version 4), so receivers made
for Alertmanager understand it.

>>> Webhook("https://u:pw@hooks.example/x").shown
'https://u:********@hooks.example/x'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import Field

from nexus_ops.alerts.engine import Notice
from nexus_ops.alerts.rules import AlertRule, WebhookConfig
from nexus_ops.models import Frozen
from nexus_ops.redact import mask_url, redact
from nexus_ops.store import Journal

log = logging.getLogger(__name__)
DELIVERY_FAILED = "alert_delivery_failed"
_ZERO_TIME = "0001-01-01T00:00:00Z"
_RETRYABLE = {408, 429}


@dataclass
class Webhook:
    """One receiver: its URL (may hold credentials), a bearer token, extra headers."""

    url: str
    token: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None  # None: the notifier's timeout

    @classmethod
    def from_config(cls, config: WebhookConfig) -> Webhook:
        return cls(config.url, config.token, dict(config.headers), config.timeout)

    @property
    def shown(self) -> str:
        return mask_url(self.url)

    def secrets(self) -> list[str]:
        """Every secret this receiver holds, to scrub from error texts."""
        parsed = httpx.URL(self.url)
        found = [self.token or "", parsed.password or "", *self.headers.values()]
        found += [value for _, value in parsed.params.multi_items()]
        return [s for s in found if len(s) >= 4]


class ReceiverStatus(Frozen):
    """How deliveries to one webhook went (its URL masked)."""

    receiver: str
    delivered: int = 0
    failed: int = 0
    last_attempt: float | None = None
    last_error: str | None = None


class NotificationRecord(Frozen):
    """One notification sent to the receivers (newest last in the alerts view)."""

    time: float
    rule: str
    status: Notice
    severity: str
    summary: str
    value: float | None = None
    delivered: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)


@dataclass
class _Tally:
    delivered: int = 0
    failed: int = 0
    last_attempt: float | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class Grouping:
    """How alerts are grouped into notifications (Alertmanager's ``group_by``, ...)."""

    by: tuple[str, ...] = ("severity",)
    wait: float = 0.0
    interval: float = 0.0

    def key(self, labels: Mapping[str, str]) -> str:
        """Alertmanager's form of a group key: ``{}:{severity="critical"}``."""
        return "{}:{" + ",".join(f'{name}="{labels.get(name, "")}"' for name in self.by) + "}"


@dataclass
class _Group:
    """The changes of one group that a receiver has not been sent yet."""

    labels: dict[str, str]
    first: float
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Receiver:
    """One webhook: its tally, its pending groups and the worker that sends them."""

    hook: Webhook
    tally: _Tally = field(default_factory=_Tally)
    pending: dict[str, _Group] = field(default_factory=dict)
    last_sent: dict[str, float] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    http: httpx.AsyncClient | None = None


class Notifier:
    """Sends grouped notifications to every webhook in the background.

    >>> # notifier = Notifier([Webhook(url)], journal); notifier.send(rule, "firing", 2.0, t0)
    """

    def __init__(
        self,
        webhooks: list[Webhook],
        journal: Journal,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        grouping: Grouping | None = None,
        source: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.webhooks = webhooks
        self.journal = journal
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.grouping = grouping or Grouping()
        self.source = source or socket.gethostname()
        self.recent: deque[NotificationRecord] = deque(maxlen=50)
        self._clock = clock
        self._receivers = [_Receiver(hook) for hook in webhooks]
        self._flushing = False

    def statuses(self) -> list[ReceiverStatus]:
        return [ReceiverStatus(receiver=r.hook.shown, **vars(r.tally)) for r in self._receivers]

    def send(
        self, rule: AlertRule, status: Notice, value: float | None, started: float | None
    ) -> NotificationRecord:
        """Add one alert's change to its group at every webhook; return its record
        (updated as deliveries go)."""
        now = self._clock()
        record = NotificationRecord(
            time=now,
            rule=rule.name,
            status=status,
            severity=rule.severity,
            summary=rule.summary or rule.readable(),
            value=value,
        )
        self.recent.append(record)
        alert = alert_body(rule, status, value, started or now, now, self.source)
        key = self.grouping.key(alert["labels"])
        labels = {name: alert["labels"].get(name, "") for name in self.grouping.by}
        for receiver in self._receivers:
            group = receiver.pending.setdefault(key, _Group(labels, time.monotonic()))
            group.alerts[rule.name] = alert
            self._wake(receiver)
        return record

    def _wake(self, receiver: _Receiver) -> None:
        if receiver.task is None or receiver.task.done():
            receiver.task = asyncio.get_running_loop().create_task(self._work(receiver))
        receiver.wake.set()

    async def _work(self, receiver: _Receiver) -> None:
        """Send the receiver's groups as they fall due, one at a time, until none is left."""
        try:
            while receiver.pending:
                key, wait = self._next_due(receiver)
                if wait > 0:
                    receiver.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(receiver.wake.wait(), wait)
                    continue
                group = receiver.pending.pop(key)
                receiver.last_sent[key] = time.monotonic()
                await self._deliver(receiver, key, group)
        except asyncio.CancelledError:
            for key, group in receiver.pending.items():
                self._failed(receiver, key, group, 0, "the agent stopped before it was sent")
            receiver.pending.clear()
            raise

    def _next_due(self, receiver: _Receiver) -> tuple[str, float]:
        """The group to send next and the seconds until it is due."""
        if self._flushing:
            return next(iter(receiver.pending)), 0.0
        grouping = self.grouping
        due = {
            key: max(
                group.first + grouping.wait,
                receiver.last_sent.get(key, -math.inf) + grouping.interval,
            )
            for key, group in receiver.pending.items()
        }
        key = min(due, key=due.__getitem__)
        return key, due[key] - time.monotonic()

    async def _deliver(self, receiver: _Receiver, key: str, group: _Group) -> None:
        body = payload(key, group.labels, list(group.alerts.values()))
        attempts, error = 0, "not sent"
        try:
            for attempts in range(1, self.retries + 2):
                outcome, retry = await self._attempt(receiver, body)
                if outcome is None:
                    self._count(receiver, group, None)
                    return
                error = outcome
                if not retry or attempts > self.retries:
                    break
                await asyncio.sleep(min(self.backoff * 2 ** (attempts - 1), 30.0))
        except asyncio.CancelledError:
            error = f"{error}; the agent stopped before the delivery succeeded"
            self._failed(receiver, key, group, attempts, error)
            raise
        self._failed(receiver, key, group, attempts, error)

    async def _attempt(self, receiver: _Receiver, body: dict[str, Any]) -> tuple[str | None, bool]:
        """One POST within the receiver's deadline: (None, _) on success, else (error, retry)."""
        hook = receiver.hook
        headers = {"User-Agent": "nexus-ops-alerts", **hook.headers}
        url = httpx.URL(hook.url)
        if hook.token:  # the token wins over credentials in the URL (sent as basic auth)
            headers["Authorization"] = f"Bearer {hook.token}"
            url = url.copy_with(userinfo=b"")
        deadline = hook.timeout or self.timeout
        try:
            async with asyncio.timeout(deadline):
                response = await self._client(receiver).post(url, json=body, headers=headers)
        except TimeoutError:
            return f"Timeout: no answer within {deadline:g} s", True
        except httpx.HTTPError as exc:
            text = f"{type(exc).__name__}: {exc}".replace(hook.url, hook.shown)
            return redact(text, hook.secrets()), True
        if response.is_success:
            return None, False
        code = response.status_code
        error = f"HTTP {code} {response.reason_phrase}"
        if response.is_redirect:
            # Followed, a redirect would carry the alert and its credentials elsewhere.
            target = redact(response.headers.get("location", ""), hook.secrets())
            error += f": a redirect to {target} (not followed); point the webhook at the final URL"
        return error, code >= 500 or code in _RETRYABLE

    def _client(self, receiver: _Receiver) -> httpx.AsyncClient:
        """A client of the receiver's own (one worker: one connection at a time)."""
        if receiver.http is None:
            receiver.http = httpx.AsyncClient(
                timeout=receiver.hook.timeout or self.timeout,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            )
        return receiver.http

    def _count(self, receiver: _Receiver, group: _Group, error: str | None) -> None:
        tally = receiver.tally
        tally.last_attempt = self._clock()
        if error is None:
            tally.delivered += 1
        else:
            tally.failed += 1
            tally.last_error = error
        self._mark(group, receiver.hook.shown, "failed" if error else "delivered")

    def _failed(
        self, receiver: _Receiver, key: str, group: _Group, attempts: int, error: str
    ) -> None:
        self._count(receiver, group, error)
        shown, rules = receiver.hook.shown, list(group.alerts)
        named = ", ".join(rules[:5]) + (f" and {len(rules) - 5} more" if len(rules) > 5 else "")
        firing = any(alert["status"] == "firing" for alert in group.alerts.values())
        status = "firing" if firing else "resolved"
        log.warning("alerts %s: delivery to %s failed: %s", named, shown, error)
        self.journal.record(
            DELIVERY_FAILED,
            reason=status,
            message=f"{named} ({status}) not delivered to {shown} "
            f"after {attempts} attempt(s): {error}",
            details={
                "rule": named,
                "rules": rules,
                "group": key,
                "receiver": shown,
                "attempts": attempts,
                "error": error,
            },
        )

    def _mark(self, group: _Group, receiver: str, outcome: str) -> None:
        """Add the receiver to the latest record of each alert of the group."""
        waiting = set(group.alerts)
        for index in range(len(self.recent) - 1, -1, -1):
            record = self.recent[index]
            if record.rule in waiting:
                waiting.discard(record.rule)
                names = [*getattr(record, outcome), receiver]
                self.recent[index] = record.model_copy(update={outcome: names})

    async def drain(self, timeout: float = 5.0) -> None:
        """Send what is pending now (grouping waits no more) for up to ``timeout`` s,
        then cancel (and record) what is left."""
        self._flushing = True
        for receiver in self._receivers:
            if receiver.pending:
                self._wake(receiver)
        pending = [r.task for r in self._receivers if r.task is not None and not r.task.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
            for task in still:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._flushing = False
        for receiver in self._receivers:
            if receiver.http is not None:
                await receiver.http.aclose()
                receiver.http = None


def alert_body(
    rule: AlertRule, status: Notice, value: float | None, started: float, now: float, source: str
) -> dict[str, Any]:
    """One alert of Alertmanager's webhook body (version 4)."""
    labels = {"alertname": rule.name, "severity": rule.severity, "instance": source, **rule.labels}
    annotations = {"summary": rule.summary or rule.readable(), "description": rule.description}
    return {
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": _iso(started),
        "endsAt": _iso(now) if status == "resolved" else _ZERO_TIME,
        "generatorURL": "",
        "fingerprint": f"nexus-ops-{rule.name}",
        "value": value,
        "rule": rule.describe(),
    }


def payload(key: str, group_labels: dict[str, str], alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) for a group of alerts: ``firing`` while
    any of them fires; the labels and annotations all of them share."""
    firing = any(alert["status"] == "firing" for alert in alerts)
    return {
        "version": "4",
        "receiver": "nexus-ops",
        "status": "firing" if firing else "resolved",
        "alerts": alerts,
        "groupLabels": group_labels,
        "commonLabels": _common([alert["labels"] for alert in alerts]),
        "commonAnnotations": _common([alert["annotations"] for alert in alerts]),
        "externalURL": "",
        "groupKey": key,
        "truncatedAlerts": 0,
    }


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    first, *rest = maps
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in rest)}


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
