"""The supervisor's liveness probe on real sockets: what it reads, and how it fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

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


def probe_with(handler: Handler, timeout: float = 1.0) -> object:
    async def run() -> object:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AsyncOpenCodeClient(
            f"http://127.0.0.1:{port}", Credentials("opencode", "pw"), timeout=timeout
        )
        try:
            return await client.health()
        finally:
            await client.aclose()
            server.close()

    return asyncio.run(run())


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
