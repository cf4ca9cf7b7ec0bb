"""A light, steady workload for as long as it runs: the demo's activity.

A few sessions each send a prompt every ``interval`` seconds, in turn from
:data:`DEMO_PROMPTS`, and open a new session after ``per_session`` prompts.
:func:`demo_script` answers them: mostly plain text streamed at a reading pace,
sometimes a short ``bash`` call, sometimes an error that OpenCode retries, then
reports on the assistant's message.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from nexus_ops.errors import ConfigError
from nexus_ops.opencode import Credentials, plain_http_tls
from nexus_ops.workload.driver import FirstTokens, PromptResult, send_prompt
from nexus_ops.workload.script import HttpError, Reply, Rule, Script, bash

TOOL_WORD = "command"
ERROR_WORD = "broken"

DEMO_PROMPTS: tuple[str, ...] = (
    "Summarise what this project does.",
    f"Run a quick {TOOL_WORD} to list the project's files.",
    "Explain the last change in two sentences.",
    "Suggest a name for the next release.",
    f"Run a {TOOL_WORD} that waits a moment.",
    "Review the open tasks.",
    f"Ask the {ERROR_WORD} model for a joke.",
    "Write a short status line for the team.",
)


def demo_script() -> Script:
    """Replies at about 40 tokens/s, a one-second ``bash`` call, and a failing model.

    >>> [rule.when for rule in demo_script().rules]
    ['command', 'broken']
    """
    return Script(
        rules=[
            Rule(when=TOOL_WORD, then=bash("ls && sleep 1", "List the files, then wait")),
            Rule(when=ERROR_WORD, then=HttpError(500, retry_after=0.5, message="model overloaded")),
        ],
        default=Reply(tokens=40, tokens_per_second=40.0, first_token_delay=0.3),
    )


@dataclass
class SteadyCounts:
    """What the workload has done so far."""

    sessions: int = 0
    prompts: int = 0
    errors: int = 0
    last_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, result: PromptResult) -> None:
        with self.lock:
            self.prompts += 1
            if result.error is not None:
                self.errors += 1
                self.last_error = result.error


def check_load(sessions: int, interval: float, per_session: int = 1, prompts: int = 1) -> None:
    """Refuse a load that cannot run, naming the value at fault."""
    wrong = [
        f"{name}={value:g} (needs {need})"
        for name, value, bad, need in (
            ("sessions", sessions, sessions < 1, "at least 1"),
            ("interval", interval, not interval > 0, "more than 0 seconds"),
            ("per_session", per_session, per_session < 1, "at least 1"),
            ("prompts", prompts, prompts < 1, "at least one prompt"),
        )
        if bad
    ]
    if wrong:
        raise ConfigError(
            "a steady workload cannot run with " + ", ".join(wrong),
            hint="give at least one session (--sessions) and a positive interval (--interval)",
        )


class SteadyWorkload:
    """Prompts every few seconds in a few sessions, in a thread, until :meth:`stop`."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None,
        sessions: int = 2,
        interval: float = 5.0,
        per_session: int = 20,
        prompts: Sequence[str] = DEMO_PROMPTS,
        timeout: float = 30.0,
    ) -> None:
        check_load(sessions, interval, per_session, len(prompts))
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.sessions = sessions
        self.interval = interval
        self.per_session = per_session
        self.prompts = list(prompts)
        # Short: a request sent while a restarted server opens its port can hang forever.
        self.timeout = timeout
        self.counts = SteadyCounts()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="steady-workload", daemon=True)

    def start(self) -> SteadyWorkload:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sending; a prompt under way is abandoned."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        auth = (self.credentials.username, self.credentials.password) if self.credentials else None
        async with httpx.AsyncClient(
            base_url=self.base_url, auth=auth, timeout=self.timeout, verify=plain_http_tls()
        ) as http:
            slots = [asyncio.create_task(self._slot(http, i)) for i in range(self.sessions)]
            while not self._stop.is_set():
                await asyncio.sleep(0.2)
            for slot in slots:
                slot.cancel()
            await asyncio.gather(*slots, return_exceptions=True)

    async def _slot(self, http: httpx.AsyncClient, index: int) -> None:
        """One session after another, each sent ``per_session`` prompts, staggered."""
        await asyncio.sleep(index * self.interval / self.sessions)
        tokens = FirstTokens()  # no event stream is followed: first tokens are not measured
        turn = index
        while True:
            session = await self._new_session(http)
            if session is None:
                await asyncio.sleep(self.interval)
                continue
            for number in range(self.per_session):
                text = self.prompts[turn % len(self.prompts)]
                turn += 1
                self.counts.add(await send_prompt(http, tokens, session, number, text))
                await asyncio.sleep(self.interval)

    async def _new_session(self, http: httpx.AsyncClient) -> str | None:
        try:
            created = await http.post("/session", json={"title": "demo"})
            created.raise_for_status()
            session = str(created.json()["id"])
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            with self.counts.lock:
                self.counts.last_error = f"creating a session failed: {exc!r}"
            return None
        with self.counts.lock:
            self.counts.sessions += 1
        return session
