"""Usage of the models through the server: tokens, cost, messages, tool calls, errors.

The ledger is pure bookkeeping: it is fed OpenCode's events (``message.updated``
with an assistant message's ``tokens`` and ``cost``, ``message.part.updated`` with
a tool part's state, ``session.status``) and, for a session as a whole, the
messages ``GET /session/{id}/message`` lists. Everything is counted per session
under keys such as ``("tokens", provider, model, kind)``; the totals are the sum
over the sessions. A message is updated many times while it streams (and again
after it completed): each update adds only what changed since the last one.

Totals only grow: replacing a session from its messages keeps, key by key, the
larger of what was counted and what the messages hold (a revert that removes
messages does not lower a counter).

>>> ledger = UsageLedger()
>>> info = {"id": "msg_1", "sessionID": "ses_1", "role": "assistant", "providerID": "p",
...         "modelID": "m", "cost": 0.5, "tokens": {"input": 10, "output": 2},
...         "time": {"created": 0, "completed": 1}}
>>> ledger.feed({"type": "message.updated", "properties": {"info": info}})
>>> ledger.feed({"type": "message.updated", "properties": {"info": info}})
>>> ledger.totals[("tokens", "p", "m", "input")], ledger.totals[("messages", "p", "m")]
(10.0, 1.0)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nexus_ops.metrics import catalogue as m

TOKEN_KINDS = ("input", "output", "reasoning", "cache_read", "cache_write")
TOOL_OUTCOMES = ("completed", "error")
# An assistant message that ends with this error was stopped by its user, not its provider.
NOT_PROVIDER_ERRORS = frozenset({"MessageAbortedError"})

Key = tuple[str, ...]
Contribution = dict[Key, float]


def message_contribution(info: Mapping[str, Any]) -> Contribution:
    """What one assistant message counts for: tokens by kind, cost, one message, an
    error of its provider, and its tokens on the day it was created (UTC).

    >>> c = message_contribution({"role": "assistant", "providerID": "p", "modelID": "m",
    ...     "tokens": {"input": 3, "cache": {"read": 1}}, "time": {"created": 86400000}})
    >>> c[("tokens", "p", "m", "cache_read")], c[("day", "1970-01-02", "p", "m", "input")]
    (1.0, 3.0)
    """
    provider, model = str(info.get("providerID") or ""), str(info.get("modelID") or "")
    tokens, cache = _tokens(info)
    values = {
        "input": tokens.get("input"),
        "output": tokens.get("output"),
        "reasoning": tokens.get("reasoning"),
        "cache_read": cache.get("read"),
        "cache_write": cache.get("write"),
    }
    created = (info.get("time") or {}).get("created") or 0
    day = time.strftime("%Y-%m-%d", time.gmtime(float(created) / 1000))
    made: Contribution = {("messages", provider, model): 1.0}
    for kind, value in values.items():
        number = _number(value)
        made[("tokens", provider, model, kind)] = number
        if number:
            made[("day", day, provider, model, kind)] = number
    made[("cost", provider, model)] = _number(info.get("cost"))
    error = info.get("error")
    if isinstance(error, Mapping) and error.get("name") not in NOT_PROVIDER_ERRORS:
        made[("errors", provider, model)] = 1.0
    return made


def tool_outcome(part: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(tool, outcome)`` of a tool part that has finished, else None."""
    if part.get("type") != "tool":
        return None
    status = (part.get("state") or {}).get("status")
    return (str(part.get("tool") or ""), str(status)) if status in TOOL_OUTCOMES else None


def _tokens(holder: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The ``tokens`` mapping of a message or session, and its ``cache`` mapping."""
    tokens = holder.get("tokens")
    tokens = tokens if isinstance(tokens, Mapping) else {}
    cache = tokens.get("cache")
    return tokens, cache if isinstance(cache, Mapping) else {}


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


@dataclass
class SessionUsage:
    """What one session counted, its title, and the totals its listing last confirmed."""

    counts: Contribution = field(default_factory=dict)
    title: str = ""
    updated: float = 0.0  # epoch seconds of the listing or the last event
    confirmed: tuple[float, ...] | None = None

    def tokens(self) -> float:
        return sum(v for k, v in self.counts.items() if k[0] == "tokens")

    def cost(self) -> float:
        return sum(v for k, v in self.counts.items() if k[0] == "cost")

    def listed_form(self) -> tuple[float, ...]:
        """The session's totals as ``GET /session`` lists them (see :func:`listed_totals`)."""
        sums = dict.fromkeys(TOKEN_KINDS, 0.0)
        for key, value in self.counts.items():
            if key[0] == "tokens":
                sums[key[3]] += value
        return (*(sums[k] for k in TOKEN_KINDS), round(self.cost(), 9))


def listed_totals(session: Mapping[str, Any]) -> tuple[float, ...]:
    """A listed session's ``tokens`` and ``cost`` as one tuple (the ledger's order)."""
    tokens, cache = _tokens(session)
    values = [tokens.get(k) for k in ("input", "output", "reasoning")]
    values += [cache.get("read"), cache.get("write")]
    return (*(_number(v) for v in values), round(_number(session.get("cost")), 9))


class UsageLedger:
    """Counts per session and in total; ``remember`` updated messages and tool parts are
    kept (least recently updated dropped first) so that a repeated update counts once."""

    def __init__(self, remember: int = 4096) -> None:
        self.sessions: dict[str, SessionUsage] = {}
        self.totals: Contribution = {}
        self.open: dict[str, str] = {}  # assistant messages under way -> their session
        self.busy: set[str] = set()
        self._messages: OrderedDict[str, Contribution] = OrderedDict()
        self._tools: OrderedDict[str, str] = OrderedDict()
        self._remember = remember

    # -- events ------------------------------------------------------------------------

    def feed(self, event: Mapping[str, Any]) -> None:
        """Count one event of ``GET /event`` (others are ignored)."""
        kind, props = event.get("type"), event.get("properties") or {}
        if kind == "message.updated":
            info = props.get("info") or {}
            if info.get("role") == "assistant" and info.get("id") and info.get("sessionID"):
                self._message(info)
        elif kind == "message.part.updated":
            part = props.get("part") or {}
            outcome = tool_outcome(part)
            if outcome is not None and part.get("id") and part.get("sessionID"):
                self._tool(str(part["sessionID"]), str(part["id"]), outcome)
        elif kind == "session.status":
            status = (props.get("status") or {}).get("type")
            self._status(str(props.get("sessionID")), str(status))
        elif kind == "session.idle":
            self._status(str(props.get("sessionID")), "idle")
        elif kind == "session.updated" and isinstance(props.get("info"), Mapping):
            self.describe(props["info"])  # its title, once OpenCode has made one

    def _message(self, info: Mapping[str, Any]) -> None:
        message, session = str(info["id"]), str(info["sessionID"])
        made = message_contribution(info)
        before = self._messages.pop(message, {})
        self._messages[message] = made
        self._trim(self._messages)
        self._add(session, {k: v - before.get(k, 0.0) for k, v in made.items()})
        finished = (info.get("time") or {}).get("completed") or info.get("error")
        if finished:
            self.open.pop(message, None)
        else:
            self.open[message] = session

    def _tool(self, session: str, part: str, outcome: tuple[str, str]) -> None:
        if part in self._tools:
            self._tools.move_to_end(part)
            return
        self._tools[part] = outcome[1]
        self._trim(self._tools)
        self._add(session, {("tools", *outcome): 1.0})

    def _status(self, session: str, status: str) -> None:
        if status in ("busy", "retry"):
            self.busy.add(session)
            return
        self.busy.discard(session)
        for message in [mid for mid, sid in self.open.items() if sid == session]:
            del self.open[message]

    def settle(self, busy: set[str]) -> None:
        """The sessions ``GET /session/status`` calls busy (or retrying): a message under
        way in any other session is no longer (its end was missed, e.g. in a crash)."""
        self.busy = set(busy)
        for message in [mid for mid, sid in self.open.items() if sid not in self.busy]:
            del self.open[message]

    def _trim(self, remembered: OrderedDict[str, Any]) -> None:
        while len(remembered) > self._remember:
            remembered.popitem(last=False)

    def _add(self, session: str, delta: Mapping[Key, float]) -> None:
        usage = self.sessions.setdefault(session, SessionUsage())
        usage.updated = time.time()
        for key, value in delta.items():
            if value > 0:  # counters only grow
                usage.counts[key] = usage.counts.get(key, 0.0) + value
                self.totals[key] = self.totals.get(key, 0.0) + value

    # -- whole sessions ----------------------------------------------------------------

    def needs_scan(self, session: Mapping[str, Any]) -> bool:
        """Whether a listed session must be counted again from its messages: unknown, or
        its totals differ from what was counted and from what its last scan confirmed,
        and it is not busy (a busy one's events are still coming)."""
        sid = str(session.get("id"))
        usage = self.sessions.get(sid)
        if usage is None:
            return True
        listed = listed_totals(session)
        if usage.listed_form() == listed:
            usage.confirmed = listed
        return listed != usage.confirmed and sid not in self.busy

    def describe(self, session: Mapping[str, Any]) -> None:
        """Keep a listed session's title and last update."""
        usage = self.sessions.get(str(session.get("id")))
        if usage is not None:
            usage.title = str(session.get("title") or "")
            stamp = (session.get("time") or {}).get("updated")
            if isinstance(stamp, int | float):
                usage.updated = float(stamp) / 1000

    def replace_session(self, session: Mapping[str, Any], messages: Iterable[Any]) -> None:
        """Count a listed session from its messages (``GET /session/{id}/message``)."""
        sid = str(session.get("id"))
        counted: Contribution = {}
        for message in messages:
            info = message.get("info") if isinstance(message, Mapping) else None
            if not isinstance(info, Mapping) or info.get("role") != "assistant":
                continue
            made = message_contribution(info)
            message_id = str(info.get("id"))
            finished = (info.get("time") or {}).get("completed") or info.get("error")
            if message_id in self._messages or not finished:  # its next update adds the rest
                self._messages[message_id] = made
            for key, value in made.items():
                counted[key] = counted.get(key, 0.0) + value
            for part in message.get("parts") or []:
                outcome = tool_outcome(part) if isinstance(part, Mapping) else None
                if outcome is not None:
                    counted[("tools", *outcome)] = counted.get(("tools", *outcome), 0.0) + 1.0
                    self._tools.setdefault(str(part.get("id")), outcome[1])
        usage = self.sessions.setdefault(sid, SessionUsage())
        grown = {k: v - usage.counts.get(k, 0.0) for k, v in counted.items()}
        self._add(sid, grown)
        self._trim(self._tools)
        self._trim(self._messages)
        usage.confirmed = listed_totals(session)
        self.describe(session)

    # -- what is shown -----------------------------------------------------------------

    def models(self) -> list[tuple[str, str]]:
        """Every (provider, model) counted, sorted."""
        return sorted({(k[1], k[2]) for k in self.totals if k[0] == "messages"})

    def busiest(self, count: int = 10) -> list[dict[str, Any]]:
        """The sessions with the most tokens, most first."""
        ranked = sorted(self.sessions.items(), key=lambda item: -item[1].tokens())[:count]
        return [
            {
                "id": sid,
                "title": usage.title,
                "tokens": usage.tokens(),
                "cost": usage.cost(),
                "messages": sum(v for k, v in usage.counts.items() if k[0] == "messages"),
                "updated": usage.updated,
            }
            for sid, usage in ranked
            if usage.tokens() > 0
        ]

    def by_day(self) -> list[dict[str, Any]]:
        """Tokens per day (UTC), provider, model and kind, oldest first."""
        return [
            {"day": k[1], "provider": k[2], "model": k[3], "kind": k[4], "tokens": v}
            for k, v in sorted(self.totals.items())
            if k[0] == "day"
        ]

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every usage series as ``(metric, labels, value)``: each model's tokens of every
        kind, cost, messages and errors (0 until one happens), tool calls, in flight."""
        values: list[tuple[str, dict[str, str], float]] = []
        for provider, model in self.models():
            labels = {"provider": provider, "model": model}
            for kind in TOKEN_KINDS:
                count = self.totals.get(("tokens", provider, model, kind), 0.0)
                values.append((m.USAGE_TOKENS.metric, {**labels, "kind": kind}, count))
            for entry, name in (
                (m.USAGE_COST, "cost"),
                (m.USAGE_MESSAGES, "messages"),
                (m.PROVIDER_ERRORS, "errors"),
            ):
                values.append((entry.metric, labels, self.totals.get((name, provider, model), 0.0)))
        for key, count in sorted(self.totals.items()):
            if key[0] == "tools":
                values.append((m.TOOL_CALLS.metric, {"tool": key[1], "outcome": key[2]}, count))
        values.append((m.PROMPTS_IN_FLIGHT.metric, {}, float(len(self.open))))
        return values
