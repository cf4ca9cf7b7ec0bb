"""The workload driver: concurrent sessions sending prompts through OpenCode's own API.

Each of ``sessions`` sessions (``POST /session``) sends its ``prompts`` one after
the other (``POST /session/{id}/message``, which answers once the assistant's turn
is over) while one listener follows the server's event stream (``GET /event``).
Per prompt it records the latency (send to answer), the time to first token
(send to the first text of the assistant's message on the event stream) and any
error (HTTP, timeout, or the error OpenCode reports on the assistant message).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from nexus_ops.alerts.window import aggregate_values
from nexus_ops.errors import ConfigError, OpenCodeUnavailable
from nexus_ops.opencode import Credentials, plain_http_tls


@dataclass(frozen=True)
class PromptResult:
    """One prompt: how long its answer took, when its first token came, what went wrong."""

    session: str
    index: int
    latency: float
    first_token: float | None
    error: str | None = None
    output_tokens: int = 0


@dataclass(frozen=True)
class WorkloadResult:
    prompts: list[PromptResult]
    seconds: float

    @property
    def errors(self) -> list[PromptResult]:
        return [p for p in self.prompts if p.error is not None]

    def latencies(self) -> list[float]:
        return [p.latency for p in self.prompts if p.error is None]

    def first_tokens(self) -> list[float]:
        return [p.first_token for p in self.prompts if p.first_token is not None]

    def p50(self) -> float | None:
        """Median latency of the prompts that succeeded (nearest rank); None if none did."""
        return aggregate_values(self.latencies(), "p50")

    def p99(self) -> float | None:
        return aggregate_values(self.latencies(), "p99")

    def first_token_p50(self) -> float | None:
        return aggregate_values(self.first_tokens(), "p50")

    def first_token_p99(self) -> float | None:
        return aggregate_values(self.first_tokens(), "p99")


@dataclass
class FirstTokens:
    """What the event stream has told: each assistant message's first text, by session."""

    assistant: dict[str, str] = field(default_factory=dict)  # message id -> session id
    seen: dict[str, float] = field(default_factory=dict)  # message id -> first text at
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def feed(self, event: dict[str, Any], at: float) -> None:
        kind, props = event.get("type"), event.get("properties") or {}
        if kind == "server.connected":
            self.connected.set()
        elif kind == "message.updated":
            info = props.get("info") or {}
            if info.get("role") == "assistant":
                self.assistant[str(info.get("id"))] = str(info.get("sessionID"))
        elif kind == "message.part.delta" and props.get("field") == "text" and props.get("delta"):
            self.seen.setdefault(str(props.get("messageID")), at)
        elif kind == "message.part.updated":
            part = props.get("part") or {}
            if part.get("type") == "text" and part.get("text"):
                self.seen.setdefault(str(part.get("messageID")), at)

    def first_after(self, session: str, sent: float) -> float | None:
        """When the first text of an assistant message of ``session`` came, after ``sent``."""
        times = [
            at
            for message, at in self.seen.items()
            if self.assistant.get(message) == session and at >= sent
        ]
        return min(times) - sent if times else None


async def follow_events(http: httpx.AsyncClient, tokens: FirstTokens) -> None:
    """Feed ``tokens`` from ``GET /event`` until cancelled."""
    async with http.stream("GET", "/event", timeout=httpx.Timeout(10.0, read=None)) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                try:
                    tokens.feed(json.loads(line[5:]), time.monotonic())
                except ValueError:
                    continue  # not JSON: not an event we read


async def send_prompt(
    http: httpx.AsyncClient, tokens: FirstTokens, session: str, index: int, text: str
) -> PromptResult:
    sent = time.monotonic()
    body = {"parts": [{"type": "text", "text": text}]}
    error: str | None = None
    output = 0
    try:
        response = await http.post(f"/session/{session}/message", json=body)
        response.raise_for_status()
        info = response.json().get("info") or {}
        output = int((info.get("tokens") or {}).get("output") or 0)
        if info.get("error"):
            error = describe_error(info["error"])
    except httpx.HTTPStatusError as exc:
        error = f"HTTP {exc.response.status_code}: {exc.response.text[:200]}"
    except (httpx.HTTPError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    latency = time.monotonic() - sent
    await asyncio.sleep(0)  # let the listener take the events already received
    return PromptResult(session, index, latency, tokens.first_after(session, sent), error, output)


def describe_error(error: Any) -> str:
    """OpenCode's error on an assistant message (``{"name", "data": {"message"}}``) in a line."""
    if isinstance(error, dict):
        message = (error.get("data") or {}).get("message") or ""
        return f"{error.get('name', 'error')}: {message}".strip(": ")
    return str(error)


async def run_session(
    http: httpx.AsyncClient, tokens: FirstTokens, prompts: Sequence[str]
) -> list[PromptResult]:
    try:
        created = await http.post("/session", json={})
        created.raise_for_status()
        session = str(created.json()["id"])
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        failed = f"creating the session failed: {exc!r}"
        return [PromptResult("", i, 0.0, None, failed) for i in range(len(prompts))]
    return [await send_prompt(http, tokens, session, i, text) for i, text in enumerate(prompts)]


async def run_workload_async(
    base_url: str,
    credentials: Credentials | None,
    sessions: int,
    prompts: Sequence[str],
    timeout: float = 120.0,
) -> WorkloadResult:
    """``sessions`` concurrent sessions, each sending every one of ``prompts`` in turn."""
    auth = (credentials.username, credentials.password) if credentials else None
    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        auth=auth,
        timeout=timeout,
        limits=httpx.Limits(max_connections=sessions + 2),
        verify=plain_http_tls(),
    ) as http:
        tokens = FirstTokens()
        listener = asyncio.create_task(follow_events(http, tokens))
        await listening(listener, tokens, base_url)
        started = time.monotonic()
        try:
            per_session = await asyncio.gather(
                *(run_session(http, tokens, prompts) for _ in range(sessions))
            )
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
    results = [result for session in per_session for result in session]
    return WorkloadResult(results, time.monotonic() - started)


async def listening(listener: asyncio.Task[None], tokens: FirstTokens, base_url: str) -> None:
    """Wait until the event stream is connected; a stream that fails is a clear error."""
    connected = asyncio.create_task(tokens.connected.wait())
    await asyncio.wait({listener, connected}, timeout=10.0, return_when=asyncio.FIRST_COMPLETED)
    connected.cancel()
    if listener.done():
        exc = listener.exception()
        raise OpenCodeUnavailable(
            f"GET {base_url}/event failed: {exc!r}" if exc else f"GET {base_url}/event ended",
            hint="check the server's address and password (the workload needs its events)",
        )
    # Not connected yet but still trying: measure anyway; first tokens may be missing.


def run_workload(
    base_url: str,
    credentials: Credentials | None,
    sessions: int,
    prompts: Sequence[str],
    timeout: float = 120.0,
) -> WorkloadResult:
    """The synchronous form of :func:`run_workload_async`."""
    if sessions < 1 or not prompts:
        raise ConfigError(
            f"a workload needs at least one session and one prompt, not {sessions} "
            f"session(s) and {len(prompts)} prompt(s)",
            hint="give sessions >= 1 and a non-empty list of prompts",
        )
    return asyncio.run(run_workload_async(base_url, credentials, sessions, prompts, timeout))
