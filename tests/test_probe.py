"""The liveness probe and the event stream on real sockets: what they read, and how they fail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from nexus_ops.errors import OpenCodeUnavailable
from nexus_ops.opencode import AsyncOpenCodeClient, Credentials

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEALTH = json.dumps({"healthy": True, "version": "9.9.9"}).encode()


def answering(response: bytes, seen: list[bytes] | None = None) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(request)
        writer.write(response)
        await writer.drain()
        writer.close()

    return handle


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)  # accepts, never answers: a hung server


def served(
    handler: Handler, work: Callable[[AsyncOpenCodeClient], Awaitable[Any]], timeout: float
) -> Any:
    """``work(client)`` with a client of a local server that answers with ``handler``."""

    async def run() -> Any:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AsyncOpenCodeClient(
            f"http://127.0.0.1:{port}", Credentials("opencode", "pw"), timeout=timeout
        )
        try:
            return await work(client)
        finally:
            await client.aclose()
            server.close()

    return asyncio.run(run())


def probe_with(handler: Handler, timeout: float = 1.0) -> object:
    return served(handler, lambda client: client.health(), timeout)


def test_a_probe_reads_a_sized_or_chunked_answer_with_the_password() -> None:
    seen: list[bytes] = []
    sized = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(HEALTH), HEALTH)
    assert probe_with(answering(sized, seen)).version == "9.9.9"  # type: ignore[attr-defined]
    assert seen[0].startswith(b"GET /global/health HTTP/1.1\r\n")
    assert b"Authorization: Basic b3BlbmNvZGU6cHc=\r\n" in seen[0]  # opencode:pw
    chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (5, HEALTH[:5], len(HEALTH) - 5, HEALTH[5:])
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    assert probe_with(answering(chunked)).version == "9.9.9"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (answering(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"), "answered HTTP 401"),
        (answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"), "failed (ValueError)"),
        (answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnope!"), "failed (JSONDecode"),
        (answering(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}"), "failed (Incomplete"),
        (silent, "timed out"),
    ],
)
def test_a_probe_that_fails_says_how(handler: Handler, message: str) -> None:
    with pytest.raises(OpenCodeUnavailable, match=r"GET http://127\.0\.0\.1:\d+/global/health"):
        try:
            probe_with(handler, timeout=0.5)
        except OpenCodeUnavailable as exc:
            assert message in exc.message
            raise


def test_a_probe_of_a_closed_port_is_refused() -> None:
    async def run() -> None:
        client = AsyncOpenCodeClient("http://127.0.0.1:9", Credentials("opencode", "pw"))
        try:
            await client.health()
        finally:
            await client.aclose()

    with pytest.raises(OpenCodeUnavailable, match="refused the connection"):
        asyncio.run(run())


# ---- the event stream, on the same kind of connection ------------------------------------

DELTA = b'{"payload":{"type":"message.part.delta","properties":{"delta":"word"}}}'
UPDATED = b'{"payload":{"type":"message.updated","properties":{"info":{"id":"msg_1"}}}}'


def stream_of(*pieces: bytes, end: bool = True, pause: float = 0.0) -> Handler:
    """A chunked server-sent stream: each piece one chunk, an event split across two."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(pause)
        if end:
            writer.write(b"0\r\n\r\n")
        else:
            await asyncio.sleep(30)  # a stream that stalls
        writer.close()

    return handle


def read_events(handler: Handler, silence: float = 5.0, skip: tuple[bytes, ...] = ()) -> list:
    async def run() -> list:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AsyncOpenCodeClient(f"http://127.0.0.1:{port}", Credentials("opencode", "pw"))
        try:
            return [event async for event in client.events(silence=silence, skip=skip)]
        finally:
            await client.aclose()
            server.close()

    return asyncio.run(run())


def test_events_are_read_across_chunks_and_skipped_lines_are_not_decoded() -> None:
    pieces = (
        b"data: " + UPDATED[:20],
        UPDATED[20:] + b"\n\n: a comment\n\ndata: " + DELTA + b"\n\ndata: not json\n\n",
        b"data: " + UPDATED + b"\r\n\r\n",
    )
    everything = read_events(stream_of(*pieces, pause=0.01))
    assert [e["payload"]["type"] for e in everything] == [
        "message.updated",
        "message.part.delta",
        "message.updated",
    ]
    skipped = read_events(stream_of(*pieces), skip=(b'"type":"message.part.delta"',))
    assert [e["payload"]["type"] for e in skipped] == ["message.updated", "message.updated"]


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (stream_of(b"data: " + UPDATED + b"\n\n", end=False), "timed out"),
        (answering(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"), "answered HTTP 401"),
        (silent, "timed out"),
    ],
)
def test_an_event_stream_that_fails_or_falls_silent_says_how(
    handler: Handler, message: str
) -> None:
    with pytest.raises(OpenCodeUnavailable, match=r"GET http://127\.0\.0\.1:\d+/global/event"):
        try:
            read_events(handler, silence=0.5)
        except OpenCodeUnavailable as exc:
            assert message in exc.message
            raise


# ---- what is asked every probe, on one kept connection -----------------------------------

STATUS = b'{"ses_1":{"type":"busy"}}'


def keeping(answers: int, seen: list[int], close_after: bool = False) -> Handler:
    """Answers up to ``answers`` requests on each connection (sized answers, kept open,
    or each one said ``Connection: close`` with ``close_after``); ``seen`` gets, per
    connection, how many requests it carried."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(0)
        close = b"Connection: close\r\n" if close_after else b""
        try:
            for _ in range(answers):
                request = await reader.readuntil(b"\r\n\r\n")
                assert b"Connection: close" not in request
                seen[-1] += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s"
                    % (close, len(STATUS), STATUS)
                )
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    return handle


def ask_times(handler: Handler, times: int, timeout: float = 1.0) -> list[object]:
    async def work(client: AsyncOpenCodeClient) -> list[object]:
        found = []
        for _ in range(times):
            found.append(await client.session_status())
            await asyncio.sleep(0.05)  # the server's close, if any, comes meanwhile
        return found

    return list(served(handler, work, timeout))


def test_the_session_status_is_asked_on_one_kept_connection() -> None:
    seen: list[int] = []
    assert ask_times(keeping(100, seen), 5) == [{"ses_1": {"type": "busy"}}] * 5
    assert seen == [5]


def test_a_kept_connection_the_server_closed_is_replaced_without_an_error() -> None:
    seen: list[int] = []
    assert len(ask_times(keeping(2, seen), 5)) == 5  # closed after every second answer
    assert seen == [2, 2, 1]
    said_close: list[int] = []
    assert len(ask_times(keeping(100, said_close, close_after=True), 3)) == 3
    assert said_close == [1, 1, 1]


def test_a_kept_connection_that_hangs_times_out_like_a_probe() -> None:
    with pytest.raises(OpenCodeUnavailable, match=r"GET http://127\.0\.0\.1:\d+/session/status"):
        try:
            ask_times(silent, 1, timeout=0.5)
        except OpenCodeUnavailable as exc:
            assert "timed out" in exc.message
            raise
