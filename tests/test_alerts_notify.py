"""Webhook deliveries against real HTTP receivers on 127.0.0.1: retries, failures recorded."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import pytest
from alert_receiver import receiver
from conftest import free_port, wait_for

from nexus_ops.alerts import AlertRule, Notifier, Webhook
from nexus_ops.alerts.notify import DELIVERY_FAILED, Grouping
from nexus_ops.store import Database, Journal

RULE = AlertRule(
    name="ServerDown",
    metric="opencode_server_status",
    op="<",
    value=1,
    severity="critical",
    summary="The server is down",
)
SECRET = "PLANTED-hook-secret-0123456789"


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(Database(tmp_path / "nexus.db"))


async def notify_and_drain(notifier: Notifier, drain: float = 30.0) -> None:
    notifier.send(RULE, "firing", 0.0, time.time() - 5)
    await notifier.drain(timeout=drain)


def failures(journal: Journal) -> list[dict[str, object]]:
    return [e.details for e in journal.events(kinds=[DELIVERY_FAILED])]


def everything_recorded(journal: Journal) -> str:
    return "\n".join(e.model_dump_json() for e in journal.events(limit=1000))


def test_delivery_carries_the_alert_the_token_and_the_url_credentials(journal: Journal) -> None:
    with receiver(userinfo=f"hook:{SECRET}") as hook:
        notifier = Notifier([Webhook(hook.url, token=SECRET + "-token")], journal, retries=2)
        asyncio.run(notify_and_drain(notifier))
    assert len(hook.received) == 1
    got = hook.received[0]
    assert got.headers["Authorization"] == f"Bearer {SECRET}-token"
    assert got.body["version"] == "4" and got.body["status"] == "firing"
    alert = got.body["alerts"][0]
    assert alert["labels"]["alertname"] == "ServerDown"
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == "The server is down"
    assert alert["endsAt"].startswith("0001-")
    [status] = notifier.statuses()
    assert (status.delivered, status.failed, status.last_error) == (1, 0, None)
    assert SECRET not in status.receiver and "hook:********@" in status.receiver
    assert notifier.recent[-1].delivered == [status.receiver]
    assert failures(journal) == []


def test_url_credentials_are_sent_as_basic_auth(journal: Journal) -> None:
    with receiver(userinfo=f"hook:{SECRET}") as hook:
        asyncio.run(notify_and_drain(Notifier([Webhook(hook.url)], journal)))
    expected = base64.b64encode(f"hook:{SECRET}".encode()).decode()
    assert hook.received[0].headers["Authorization"] == f"Basic {expected}"


def test_a_500_is_retried_with_backoff_then_recorded(journal: Journal) -> None:
    with receiver(final=500, userinfo=f"hook:{SECRET}") as hook:
        notifier = Notifier([Webhook(hook.url, token=SECRET)], journal, retries=3, backoff=0.05)
        started = time.monotonic()
        asyncio.run(notify_and_drain(notifier))
        took = time.monotonic() - started
    assert len(hook.received) == 4  # the first try and three retries
    assert took >= 0.05 + 0.1 + 0.2  # the backoff doubles between tries
    [failure] = failures(journal)
    assert failure["attempts"] == 4 and failure["rule"] == "ServerDown"
    assert failure["error"] == "HTTP 500 Internal Server Error"
    assert SECRET not in everything_recorded(journal)
    [status] = notifier.statuses()
    assert status.failed == 1 and status.last_error == "HTTP 500 Internal Server Error"
    assert notifier.recent[-1].failed == [status.receiver]


def test_a_flaky_receiver_gets_it_on_a_retry(journal: Journal) -> None:
    with receiver(statuses=[503, 502]) as hook:
        notifier = Notifier([Webhook(hook.url)], journal, retries=3, backoff=0.01)
        asyncio.run(notify_and_drain(notifier))
    assert len(hook.received) == 3
    assert failures(journal) == []
    assert notifier.statuses()[0].delivered == 1


def test_a_closed_port_is_retried_then_recorded(journal: Journal) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook?token={SECRET}"
    notifier = Notifier([Webhook(url)], journal, retries=2, backoff=0.01, timeout=2.0)
    asyncio.run(notify_and_drain(notifier))
    [failure] = failures(journal)
    assert failure["attempts"] == 3
    assert "ConnectError" in str(failure["error"])
    assert failure["receiver"] == url.replace(SECRET, "********")
    assert SECRET not in everything_recorded(journal)


def test_a_client_error_is_not_retried(journal: Journal) -> None:
    with receiver(final=404) as hook:
        asyncio.run(notify_and_drain(Notifier([Webhook(hook.url)], journal, retries=3)))
    assert len(hook.received) == 1
    assert failures(journal)[0]["error"] == "HTTP 404 Not Found"


def test_a_slow_receiver_times_out_and_is_recorded(journal: Journal) -> None:
    with receiver(delay=1.0) as hook:
        notifier = Notifier([Webhook(hook.url)], journal, retries=1, backoff=0.01, timeout=0.2)
        asyncio.run(notify_and_drain(notifier))
        # The client gave up on the second attempt; on a loaded machine the receiver's
        # thread may take a moment more to take it in.
        wait_for(lambda: len(hook.received) >= 2, 10, what="the second attempt received")
    assert len(hook.received) == 2
    assert failures(journal)[0]["error"] == "Timeout: no answer within 0.2 s"


def test_a_delivery_cut_short_by_the_agent_stopping_is_recorded(journal: Journal) -> None:
    with receiver(final=500) as hook:
        notifier = Notifier([Webhook(hook.url)], journal, retries=5, backoff=5.0)
        asyncio.run(notify_and_drain(notifier, drain=0.5))
    [failure] = failures(journal)
    assert "agent stopped before the delivery succeeded" in str(failure["error"])
    assert len(hook.received) == 1


def test_every_receiver_gets_every_notification(journal: Journal) -> None:
    with receiver() as first, receiver(final=500) as broken:
        hooks = [Webhook(first.url), Webhook(broken.url)]
        notifier = Notifier(hooks, journal, retries=1, backoff=0.01)

        async def both() -> None:
            notifier.send(RULE, "firing", 0.0, None)
            while not first.received:
                await asyncio.sleep(0.05)
            notifier.send(RULE, "resolved", 1.0, None)
            await notifier.drain()

        asyncio.run(both())
    assert sorted(first.alerts()) == [("ServerDown", "firing"), ("ServerDown", "resolved")]
    resolved = next(r for r in first.received if r.body["status"] == "resolved")
    assert not resolved.body["alerts"][0]["endsAt"].startswith("0001-")
    assert len(broken.received) == 4 and len(failures(journal)) == 2


def rule(name: str, severity: str = "warning") -> AlertRule:
    return AlertRule(name=name, metric="m", op=">", value=1, severity=severity)  # type: ignore[arg-type]


def test_alerts_of_a_group_share_one_notification(journal: Journal) -> None:
    """One POST per group (here: per severity), not one per alert."""
    with receiver() as hook:
        grouping = Grouping(by=("severity",), wait=0.5)
        notifier = Notifier([Webhook(hook.url)], journal, grouping=grouping)

        async def storm() -> None:
            for i in range(40):
                notifier.send(rule(f"Warn{i}"), "firing", float(i), None)
                await asyncio.sleep(0)  # each change in its own turn of the loop
            notifier.send(rule("Crit", "critical"), "firing", 1.0, None)
            while len(hook.received) < 2:
                await asyncio.sleep(0.05)
            await notifier.drain()

        asyncio.run(storm())
    by_key = {r.body["groupKey"]: r.body for r in hook.received}
    assert len(hook.received) == 2, [r.body["groupKey"] for r in hook.received]
    warn = by_key['{}:{severity="warning"}']
    assert len(warn["alerts"]) == 40 and warn["groupLabels"] == {"severity": "warning"}
    assert warn["commonLabels"]["severity"] == "warning"
    assert "alertname" not in warn["commonLabels"]
    assert [a["labels"]["alertname"] for a in by_key['{}:{severity="critical"}']["alerts"]] == [
        "Crit"
    ]
    [status] = notifier.statuses()
    assert status.delivered == 2
    assert all(record.delivered == [status.receiver] for record in notifier.recent)


def test_changes_within_the_group_interval_wait_and_merge(journal: Journal) -> None:
    """After a group's notification, its next changes wait for the interval and go as one,
    each alert in its latest state."""
    with receiver() as hook:
        notifier = Notifier(
            [Webhook(hook.url)], journal, grouping=Grouping(by=(), wait=0.0, interval=3600)
        )

        async def run() -> None:
            notifier.send(rule("A"), "firing", 1.0, None)
            while not hook.received:
                await asyncio.sleep(0.05)
            notifier.send(rule("A"), "resolved", 0.0, None)
            notifier.send(rule("B"), "firing", 2.0, None)
            notifier.send(rule("B"), "resolved", 0.0, None)
            notifier.send(rule("C"), "firing", 3.0, None)
            await asyncio.sleep(0.5)
            assert len(hook.received) == 1  # the interval holds the group back
            await notifier.drain()  # the agent's stop sends what waits

        asyncio.run(run())
    assert len(hook.received) == 2
    second = hook.received[1].body
    assert second["status"] == "firing"
    assert {(a["labels"]["alertname"], a["status"]) for a in second["alerts"]} == {
        ("A", "resolved"),
        ("B", "resolved"),
        ("C", "firing"),
    }


def test_a_hanging_receiver_holds_back_only_itself(journal: Journal) -> None:
    """Its own deadline ends each try; the other receiver gets everything meanwhile."""
    with receiver(hang=True) as hang, receiver() as good:
        hooks = [Webhook(hang.url, timeout=0.3), Webhook(good.url)]
        notifier = Notifier(hooks, journal, retries=1, backoff=0.01, timeout=30.0)

        async def run() -> None:
            for i in range(5):
                notifier.send(
                    rule(f"R{i}", ["warning", "critical", "info"][i % 3]), "firing", 1, None
                )
            while len(good.received) < 3:
                await asyncio.sleep(0.05)
            await notifier.drain(timeout=10)

        asyncio.run(run())
    assert len(good.received) == 3  # one per severity
    found = failures(journal)
    assert {f["error"] for f in found} == {"Timeout: no answer within 0.3 s"}
    assert len(found) == 3 and all(f["attempts"] == 2 for f in found)
    assert sorted(r for f in found for r in f["rules"]) == [f"R{i}" for i in range(5)]  # type: ignore[attr-defined]
    hang_status = notifier.statuses()[0]
    assert hang_status.failed == 3 and hang_status.delivered == 0


def test_groups_waiting_when_the_agent_stops_are_recorded(journal: Journal) -> None:
    with receiver(hang=True) as hang:
        notifier = Notifier([Webhook(hang.url)], journal, retries=0, timeout=30.0)

        async def run() -> None:
            notifier.send(rule("First", "critical"), "firing", 1.0, None)
            while not hang.received:
                await asyncio.sleep(0.05)
            notifier.send(rule("Second"), "firing", 1.0, None)
            await notifier.drain(timeout=0.5)

        asyncio.run(run())
    errors = {f["rule"]: f["error"] for f in failures(journal)}
    assert "agent stopped before the delivery succeeded" in str(errors["First"])
    assert errors["Second"] == "the agent stopped before it was sent"


@pytest.mark.parametrize(("code", "reason"), [(302, "Found"), (307, "Temporary Redirect")])
def test_a_redirect_is_not_followed_and_is_recorded(
    journal: Journal, code: int, reason: str
) -> None:
    """A receiver answering a redirect cannot send the alert (and its token) elsewhere."""
    with receiver() as elsewhere:
        with receiver(final=code, location=f"{elsewhere.url}?token={SECRET}") as hook:
            notifier = Notifier([Webhook(hook.url, token=SECRET)], journal, retries=2)
            asyncio.run(notify_and_drain(notifier))
        assert elsewhere.received == []
    assert len(hook.received) == 1  # a redirect is not retried either
    [failure] = failures(journal)
    error = str(failure["error"])
    assert error.startswith(f"HTTP {code} {reason}") and "redirect" in error
    assert elsewhere.url in error and "final URL" in error
    assert SECRET not in everything_recorded(journal)
    assert notifier.statuses()[0].failed == 1
