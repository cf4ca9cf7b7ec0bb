"""The pure part of session-aware supervision: busy sessions and the drain decision."""

from __future__ import annotations

from nexus_ops.drain import BusySessions, Drain, busy_in, decide, describe_sessions


def test_busy_and_retrying_sessions_count_idle_and_odd_answers_do_not() -> None:
    statuses = {
        "ses_b": {"type": "busy"},
        "ses_a": {"type": "retry", "attempt": 2, "message": "rate limited", "next": 1},
        "ses_c": {"type": "idle"},
        "ses_d": "busy",
        "ses_e": {},
    }
    assert busy_in(statuses) == ["ses_a", "ses_b"]
    assert busy_in({}) == []


def test_busy_sessions_remember_since_when_and_forget_the_finished() -> None:
    busy = BusySessions()
    assert busy.update({"s1": {"type": "busy"}}, now=100.0) == ["s1"]
    busy.update({"s1": {"type": "busy"}, "s2": {"type": "busy"}}, now=101.0)
    assert busy.durations(now=103.04) == {"s1": 3.0, "s2": 2.0}
    busy.update({"s2": {"type": "busy"}}, now=104.0)
    assert busy.ids() == ["s2"] and busy.durations(now=104.0) == {"s2": 3.0}
    busy.update({"s1": {"type": "busy"}, "s2": {"type": "busy"}}, now=105.0)
    assert busy.durations(now=105.0)["s1"] == 0.0, "busy again: a new prompt, a new start"
    busy.clear()
    assert busy.ids() == [] and busy.durations(now=106.0) == {}


def test_a_restart_waits_while_sessions_are_busy_until_the_limit() -> None:
    assert decide([], waited=0.0, limit=30.0) is Drain.DRAINED
    assert decide([], waited=99.0, limit=30.0) is Drain.DRAINED
    assert decide(["s1"], waited=29.9, limit=30.0) is Drain.WAIT
    assert decide(["s1"], waited=30.0, limit=30.0) is Drain.TIMEOUT


def test_sessions_are_named_a_few_at_a_time() -> None:
    assert describe_sessions(["a"]) == "a"
    assert describe_sessions([f"s{i}" for i in range(7)]) == "s0, s1, s2, s3, s4 and 2 more"
