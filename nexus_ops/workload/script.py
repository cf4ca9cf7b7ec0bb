"""What the scripted model answers: typed steps, matched against each request.

A script is a list of rules. A request is answered by the first rule whose
``when`` occurs in the last user message (an empty ``when`` matches any) and
that has uses left; with none, by the script's ``default`` reply. A request whose
conversation already holds the result of a tool call is answered by the
``after_tool`` reply, so that the agent's loop ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_ops.errors import ConfigError


@dataclass(frozen=True)
class Reply:
    """Plain text: ``text`` if given, else ``tokens`` words; ``tokens_per_second`` (0: at once)."""

    text: str = ""
    tokens: int = 8
    tokens_per_second: float = 0.0
    first_token_delay: float = 0.0

    def chunks(self) -> list[str]:
        """The text in the pieces it is streamed in, one token each."""
        if self.text:
            words = self.text.split(" ")
            return [w if i == 0 else " " + w for i, w in enumerate(words)]
        return [("word" if i == 0 else " word") + str(i + 1) for i in range(self.tokens)]


@dataclass(frozen=True)
class ToolCall:
    """A call of one of OpenCode's tools, e.g. ``bash`` with ``{"command": "sleep 5"}``."""

    tool: str
    arguments: dict[str, Any]
    first_token_delay: float = 0.0


@dataclass(frozen=True)
class HttpError:
    """An error answer: 429 (with ``Retry-After``), 500, ..."""

    status: int
    retry_after: float | None = None
    message: str = "scripted error"


@dataclass(frozen=True)
class Stall:
    """A stream that sends ``chunks`` tokens, then nothing for ``seconds`` (None: forever)."""

    chunks: int = 2
    seconds: float | None = None


Step = Reply | ToolCall | HttpError | Stall


def bash(command: str, description: str = "Run a scripted command") -> ToolCall:
    """A call of OpenCode's ``bash`` tool."""
    return ToolCall("bash", {"command": command, "description": description})


def write(path: str, content: str) -> ToolCall:
    """A call of OpenCode's ``write`` tool (``path`` absolute, or relative to the project)."""
    return ToolCall("write", {"filePath": path, "content": content})


@dataclass(frozen=True)
class Rule:
    """Answer requests whose last user message holds ``when`` with ``then``, ``times`` times."""

    then: Step
    when: str = ""
    times: int | None = None


@dataclass(frozen=True)
class Script:
    rules: list[Rule] = field(default_factory=list)
    default: Reply = field(default_factory=Reply)
    after_tool: Reply = field(default_factory=lambda: Reply(text="Done."))
    title: str = "Scripted session"


KINDS: dict[str, type[Step]] = {
    "reply": Reply,
    "tool": ToolCall,
    "error": HttpError,
    "stall": Stall,
}


def load_script(path: Path) -> Script:
    """A script from a JSON file (format in docs/workload.md)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"workload script {path} cannot be read: {exc}",
            hint="give a JSON file as described in docs/workload.md",
        ) from exc
    return parse_script(data, str(path))


def parse_script(data: Any, where: str = "script") -> Script:
    """A script from its JSON form; bad input names the field at fault.

    >>> parse_script({"rules": [{"when": "hi", "then": {"kind": "reply", "text": "Hello"}}]}).rules
    [Rule(then=Reply(text='Hello', tokens=8, tokens_per_second=0.0, first_token_delay=0.0), when='hi', times=None)]
    """
    if not isinstance(data, dict):
        raise _bad(where, "must be a JSON object")
    rules_data = data.get("rules", [])
    if not isinstance(rules_data, list):
        raise _bad(f"{where}: rules", "must be a list")
    rules = [_rule(item, f"{where}: rules[{i}]") for i, item in enumerate(rules_data)]
    extra: dict[str, Any] = {}
    for name in ("default", "after_tool"):
        if name in data:
            extra[name] = _step(
                {"kind": "reply", **_object(data[name], f"{where}: {name}")}, f"{where}: {name}"
            )
    if "title" in data:
        extra["title"] = str(data["title"])
    return Script(rules=rules, **extra)


def _rule(item: Any, where: str) -> Rule:
    body = _object(item, where)
    unknown = set(body) - {"when", "then", "times"}
    if unknown:
        raise _bad(where, f"has unknown fields {sorted(unknown)}; use when, then, times")
    times = body.get("times")
    if times is not None and (not isinstance(times, int) or times < 1):
        raise _bad(f"{where}.times", f"must be a whole number of at least 1, not {times!r}")
    return Rule(
        then=_step(body.get("then"), f"{where}.then"), when=str(body.get("when", "")), times=times
    )


def _step(item: Any, where: str) -> Step:
    body = dict(_object(item, where))
    kind = body.pop("kind", None)
    cls = KINDS.get(str(kind))
    if cls is None:
        raise _bad(f"{where}.kind", f"is {kind!r}; use one of {', '.join(KINDS)}")
    try:
        step = cls(**body)
    except TypeError as exc:
        raise _bad(where, f"does not fit a {kind} step: {exc}") from exc
    return step


def _object(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _bad(where, f"must be a JSON object, not {type(item).__name__}")
    return item


def _bad(where: str, what: str) -> ConfigError:
    return ConfigError(f"{where} {what}", hint="see docs/workload.md for the script format")
