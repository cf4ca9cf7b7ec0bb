"""Notifications: an Alertmanager-style JSON POST to each webhook, retried, never lost silently.

Each delivery has a timeout and is retried with a doubling backoff on a network
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

    @classmethod
    def from_config(cls, config: WebhookConfig) -> Webhook:
        return cls(config.url, config.token, dict(config.headers))

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


class Notifier:
    """Sends each notification to every webhook in the background.

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
        source: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.webhooks = webhooks
        self.journal = journal
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.source = source or socket.gethostname()
        self.recent: deque[NotificationRecord] = deque(maxlen=50)
        self._clock = clock
        self._tally = {hook.shown: _Tally() for hook in webhooks}
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    def statuses(self) -> list[ReceiverStatus]:
        return [ReceiverStatus(receiver=name, **vars(t)) for name, t in self._tally.items()]

    def send(
        self, rule: AlertRule, status: Notice, value: float | None, started: float | None
    ) -> NotificationRecord:
        """Queue one notification to every webhook; return its record (updated as it goes)."""
        now = self._clock()
        record = NotificationRecord(
            time=now,
            rule=rule.name,
            status=status,
            severity=rule.severity,
            summary=rule.summary or rule.describe(),
            value=value,
        )
        self.recent.append(record)
        body = payload(rule, status, value, started or now, now, self.source)
        for hook in self.webhooks:
            task = asyncio.get_running_loop().create_task(self._deliver(hook, body, rule.name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return record

    async def _deliver(self, hook: Webhook, body: dict[str, Any], rule: str) -> None:
        attempts, error = 0, "not sent"
        outcome: str | None
        try:
            for attempts in range(1, self.retries + 2):
                outcome, retry = await self._attempt(hook, body)
                if outcome is None:
                    self._count(hook, rule, None)
                    return
                error = outcome
                if not retry or attempts > self.retries:
                    break
                await asyncio.sleep(min(self.backoff * 2 ** (attempts - 1), 30.0))
        except asyncio.CancelledError:
            error = f"{error}; the agent stopped before the delivery succeeded"
            self._failed(hook, rule, body["status"], attempts, error)
            raise
        self._failed(hook, rule, body["status"], attempts, error)

    async def _attempt(self, hook: Webhook, body: dict[str, Any]) -> tuple[str | None, bool]:
        """One POST: (None, _) on success, else (error, whether to retry)."""
        headers = {"User-Agent": "nexus-ops-alerts", **hook.headers}
        url = httpx.URL(hook.url)
        if hook.token:  # the token wins over credentials in the URL (sent as basic auth)
            headers["Authorization"] = f"Bearer {hook.token}"
            url = url.copy_with(userinfo=b"")
        try:
            response = await self._client().post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            text = f"{type(exc).__name__}: {exc}".replace(hook.url, hook.shown)
            return redact(text, hook.secrets()), True
        if response.is_success:
            return None, False
        code = response.status_code
        return f"HTTP {code} {response.reason_phrase}", code >= 500 or code in _RETRYABLE

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        return self._http

    def _count(self, hook: Webhook, rule: str, error: str | None) -> None:
        tally = self._tally.setdefault(hook.shown, _Tally())
        tally.last_attempt = self._clock()
        if error is None:
            tally.delivered += 1
            self._mark(rule, hook.shown, "delivered")
        else:
            tally.failed += 1
            tally.last_error = error
            self._mark(rule, hook.shown, "failed")

    def _failed(self, hook: Webhook, rule: str, status: str, attempts: int, error: str) -> None:
        self._count(hook, rule, error)
        log.warning("alert %s: delivery to %s failed: %s", rule, hook.shown, error)
        self.journal.record(
            DELIVERY_FAILED,
            reason=status,
            message=f"{rule} ({status}) not delivered to {hook.shown} "
            f"after {attempts} attempt(s): {error}",
            details={"rule": rule, "receiver": hook.shown, "attempts": attempts, "error": error},
        )

    def _mark(self, rule: str, receiver: str, outcome: str) -> None:
        for index in range(len(self.recent) - 1, -1, -1):
            record = self.recent[index]
            if record.rule == rule:
                names = [*getattr(record, outcome), receiver]
                self.recent[index] = record.model_copy(update={outcome: names})
                return

    async def drain(self, timeout: float = 5.0) -> None:
        """Let pending deliveries finish for up to ``timeout`` s, then cancel (and record) them."""
        pending = list(self._tasks)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
            for task in still:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def payload(
    rule: AlertRule, status: Notice, value: float | None, started: float, now: float, source: str
) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) for one alert."""
    labels = {"alertname": rule.name, "severity": rule.severity, "instance": source, **rule.labels}
    annotations = {"summary": rule.summary or rule.describe(), "description": rule.description}
    alert = {
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
    return {
        "version": "4",
        "receiver": "nexus-ops",
        "status": status,
        "alerts": [alert],
        "groupLabels": {"alertname": rule.name},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "groupKey": f"nexus-ops:{rule.name}",
        "truncatedAlerts": 0,
    }


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
