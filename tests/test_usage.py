"""The usage ledger's bookkeeping, fed events shaped as OpenCode 1.18.33 sends them
(see tests/test_usage_real.py for the real server), and the tracker's paging."""

from __future__ import annotations

import asyncio
from typing import Any

from nexus_ops.metrics.usage import UsageLedger
from nexus_ops.metrics.usage_follow import PAGE, UsageTracker

S = "ses_1"


def assistant(
    mid: str, tokens: dict[str, Any], completed: bool = True, error: str | None = None, **more: Any
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "id": mid,
        "sessionID": S,
        "role": "assistant",
        "providerID": "scripted",
        "modelID": "m1",
        "cost": more.get("cost", 0),
        "tokens": {"reasoning": 0, "cache": {"read": 0, "write": 0}, **tokens},
        "time": {"created": 1796411978847, **({"completed": 1796411982281} if completed else {})},
    }
    if error:
        info["error"] = {"name": error, "data": {"message": "no"}}
    return info


def updated(info: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message.updated", "properties": {"sessionID": S, "info": info}}


def tool(part: str, status: str) -> dict[str, Any]:
    state = {"status": status, "input": {"command": "sleep 1"}}
    body = {"id": part, "sessionID": S, "messageID": "m2", "type": "tool", "tool": "bash"}
    return {"type": "message.part.updated", "properties": {"part": {**body, "state": state}}}


def status(kind: str) -> dict[str, Any]:
    return {"type": "session.status", "properties": {"sessionID": S, "status": {"type": kind}}}


def key(kind: str) -> tuple[str, ...]:
    return ("tokens", "scripted", "m1", kind)


def test_a_message_updated_many_times_counts_once() -> None:
    ledger = UsageLedger()
    ledger.feed(updated(assistant("m1", {"input": 0, "output": 0}, completed=False)))
    assert ledger.open == {"m1": S}
    assert ledger.totals[("messages", "scripted", "m1")] == 1.0
    done = assistant(
        "m1", {"input": 2385, "output": 7, "cache": {"read": 5, "write": 2}}, cost=0.25
    )
    for _ in range(3):  # OpenCode repeats the final update
        ledger.feed(updated(done))
    assert ledger.totals[key("input")] == 2385
    assert ledger.totals[key("output")] == 7
    assert ledger.totals[key("cache_read")] == 5 and ledger.totals[key("cache_write")] == 2
    assert ledger.totals[("cost", "scripted", "m1")] == 0.25
    assert ledger.totals[("messages", "scripted", "m1")] == 1.0
    assert ledger.totals[("day", "2026-12-04", "scripted", "m1", "input")] == 2385
    assert ledger.open == {}
    assert ledger.busiest()[0]["tokens"] == 2385 + 7 + 5 + 2
    titled = {"id": S, "title": "Greeting", "time": {"updated": 1796411984971}}
    ledger.feed({"type": "session.updated", "properties": {"sessionID": S, "info": titled}})
    assert ledger.busiest()[0]["title"] == "Greeting"


def test_provider_errors_count_once_and_an_abort_is_no_provider_error() -> None:
    ledger = UsageLedger()
    failed = assistant("m1", {"input": 0, "output": 0}, error="APIError")
    ledger.feed(updated(failed))
    ledger.feed(updated(failed))
    ledger.feed(updated(assistant("m2", {"input": 0, "output": 0}, error="MessageAbortedError")))
    assert ledger.totals[("errors", "scripted", "m1")] == 1.0
    assert ledger.totals[("messages", "scripted", "m1")] == 2.0
    assert ledger.open == {}


def test_a_tool_call_counts_once_when_it_finishes() -> None:
    ledger = UsageLedger()
    for state in ("pending", "running", "running", "completed", "completed"):
        ledger.feed(tool("p1", state))
    ledger.feed(tool("p2", "error"))
    assert ledger.totals[("tools", "bash", "completed")] == 1.0
    assert ledger.totals[("tools", "bash", "error")] == 1.0
    samples = {(m, tuple(sorted(labels.items()))): v for m, labels, v in ledger.samples()}
    assert samples[("opencode_tool_calls_total", (("outcome", "completed"), ("tool", "bash")))] == 1


def test_an_idle_session_has_no_prompt_in_flight() -> None:
    ledger = UsageLedger()
    ledger.feed(status("busy"))
    ledger.feed(updated(assistant("m1", {"input": 0}, completed=False)))
    assert ledger.busy == {S} and len(ledger.open) == 1
    ledger.feed({"type": "session.idle", "properties": {"sessionID": S}})
    assert ledger.busy == set() and ledger.open == {}
    # The end of a message was missed (the server crashed): the session's status settles it.
    ledger.feed(updated(assistant("m2", {"input": 0}, completed=False)))
    ledger.settle({S})
    assert len(ledger.open) == 1
    ledger.settle(set())
    assert ledger.open == {}


def listed(input_tokens: float, output: float, cost: float = 0.0) -> dict[str, Any]:
    tokens = {"input": input_tokens, "output": output, "reasoning": 0}
    return {
        "id": S,
        "title": "Scripted session",
        "cost": cost,
        "tokens": {**tokens, "cache": {"read": 0, "write": 0}},
        "time": {"updated": 1796411984971},
    }


def messages(*infos: dict[str, Any], parts: list[dict[str, Any]] | None = None) -> list[Any]:
    return [{"info": info, "parts": parts or []} for info in infos]


def test_a_session_counted_from_its_messages_then_from_events() -> None:
    ledger = UsageLedger()
    session = listed(30, 3)
    assert ledger.needs_scan(session)  # unknown
    bash_part = tool("p1", "completed")["properties"]["part"]
    streaming = assistant("m2", {"input": 10, "output": 1}, completed=False)
    ledger.replace_session(
        session,
        messages(assistant("m1", {"input": 20, "output": 2}), streaming, parts=[bash_part]),
    )
    assert ledger.totals[key("input")] == 30
    assert ledger.totals[("tools", "bash", "completed")] == 2.0  # once per message here
    assert not ledger.needs_scan(session)
    # The message still streaming when it was scanned: its next update adds only the rest.
    ledger.feed(updated(assistant("m2", {"input": 10, "output": 5})))
    ledger.feed(tool("p1", "completed"))  # already counted by the scan
    assert ledger.totals[key("output")] == 2 + 5
    assert ledger.totals[("tools", "bash", "completed")] == 2.0
    assert ledger.sessions[S].title == "Scripted session"


def test_a_session_whose_totals_differ_is_counted_again_unless_busy() -> None:
    ledger = UsageLedger()
    ledger.replace_session(listed(20, 2), messages(assistant("m1", {"input": 20, "output": 2})))
    grown = listed(50, 4)
    ledger.busy = {S}
    assert not ledger.needs_scan(grown)  # its events are still coming
    ledger.busy = set()
    assert ledger.needs_scan(grown)
    more = messages(assistant("m1", {"input": 20, "output": 2}), assistant("m3", {"input": 30}))
    ledger.replace_session(grown, more)
    assert ledger.totals[key("input")] == 50
    # A revert removed a message: the counters do not go down, nor is it scanned again.
    reverted = listed(20, 2)
    assert ledger.needs_scan(reverted)
    ledger.replace_session(reverted, messages(assistant("m1", {"input": 20, "output": 2})))
    assert ledger.totals[key("input")] == 50
    assert not ledger.needs_scan(reverted)


class Pages:
    """A server listing ``count`` sessions, ``PAGE`` at a time before a cursor."""

    def __init__(self, count: int) -> None:
        self.all = [{"id": f"ses_{i}", "time": {"updated": 10_000 - i}} for i in range(count)]
        self.asked: list[str] = []

    async def get(self, path: str) -> Any:
        self.asked.append(path)
        query = dict(part.split("=") for part in path.split("?")[1].split("&"))
        cursor = float(query.get("cursor", "inf"))
        start = float(query.get("start", "-inf"))
        return [s for s in self.all if start <= s["time"]["updated"] < cursor][:PAGE]

    def events(self, path: str = "", silence: float = 0.0, skip: tuple[bytes, ...] = ()) -> Any:
        raise NotImplementedError


def test_the_sessions_of_every_project_are_listed_a_page_at_a_time() -> None:
    server = Pages(PAGE * 2 + 5)
    tracker = UsageTracker(server, server)  # type: ignore[arg-type]
    found = asyncio.run(tracker.sessions())
    assert len(found) == PAGE * 2 + 5
    assert len(server.asked) == 3
    assert all(p.startswith("/experimental/session?archived=true") for p in server.asked)
    assert len(asyncio.run(tracker.sessions(since=9.9))) == 101  # updated at 9,900 ms on
    assert server.asked[-1].endswith("&start=9900")
