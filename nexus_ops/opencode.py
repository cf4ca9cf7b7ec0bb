"""OpenCode itself: finding and installing its binary, and talking to its HTTP API (httpx).

OpenCode opens its port before it can answer, and a request sent in that window
can hang forever: every request here carries a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import platform
import shlex
import shutil
import ssl
import subprocess
import sys
import time
from base64 import b64encode
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from nexus_ops.errors import BinaryNotFound, InstallError, OpenCodeUnavailable

# httpcore tries ``import sniffio`` for every lock of every asynchronous request; when
# it is not installed each try searches the whole of sys.path again (about 0.5 % of a
# core for an agent probing every second). Absent, it is marked so once.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

NPM_PACKAGE = "opencode-ai"


def native_package_names() -> list[str]:
    """npm packages that hold the native binary for this machine, preferred first."""
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = platform.system().lower()
    return [f"opencode-{system}-{arch}", f"opencode-{system}-{arch}-baseline"]


def native_binary_in(node_modules: Path) -> Path | None:
    """The native binary inside an npm ``node_modules`` folder, if installed there."""
    for name in native_package_names():
        candidate = node_modules / name / "bin" / "opencode"
        if candidate.is_file():
            return candidate
    return None


def is_script(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"#!"


def locate_binary(configured: Path | None, prefix: Path) -> Path:
    """The native OpenCode binary to run.

    In order: ``NEXUS_OPENCODE_BIN``; the one installed under ``prefix`` by
    ``nexus-ops opencode install``; ``opencode`` on PATH (the npm wrapper script
    is resolved to the native binary beside it, never run itself: it swallows
    signals and orphans the server).
    """
    if configured is not None:
        if not configured.is_file():
            raise BinaryNotFound(
                f"NEXUS_OPENCODE_BIN={configured} does not exist",
                hint="point it at the native opencode binary, or unset it and run "
                "`nexus-ops opencode install`",
            )
        return _native(configured)
    installed = native_binary_in(prefix / "node_modules")
    if installed is not None:
        return installed
    on_path = shutil.which("opencode")
    if on_path is not None:
        return _native(Path(on_path))
    raise BinaryNotFound(
        "no OpenCode binary found",
        hint="run `nexus-ops opencode install`, or set NEXUS_OPENCODE_BIN to the binary",
    )


def _native(path: Path) -> Path:
    """The native binary for ``path``: itself, or, for npm's wrapper, the binary beside it."""
    if not is_script(path):
        return path
    real = path.resolve()
    wrapper = next((p for p in real.parents if p.name == "node_modules"), None)
    if wrapper is None:
        return path  # a script of the operator's own: run as given
    native = native_binary_in(wrapper)
    if native is None:
        raise BinaryNotFound(
            f"{path} is npm's wrapper script, and no native binary is installed beside it",
            hint="reinstall with `nexus-ops opencode install`, or set NEXUS_OPENCODE_BIN to "
            "node_modules/opencode-linux-x64/bin/opencode",
        )
    return native


def binary_version(binary: Path) -> str:
    """The version the binary reports (``opencode --version``)."""
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BinaryNotFound(
            f"{binary} did not report its version: {exc}",
            hint="reinstall it with `nexus-ops opencode install`",
        ) from exc
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "unknown"


def install(version: str, prefix: Path) -> Path:
    """Install npm's ``opencode-ai@version`` under ``prefix``; return the native binary."""
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError(
            "npm is not installed",
            hint="install Node.js and npm (e.g. `apt-get install nodejs npm`), or set "
            "NEXUS_OPENCODE_BIN to an OpenCode binary you installed yourself",
        )
    prefix.mkdir(parents=True, exist_ok=True)
    argv = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent"]
    argv.append(f"{NPM_PACKAGE}@{version}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise InstallError(
            f"npm install {NPM_PACKAGE}@{version} failed: {done.stderr.strip()[-800:]}",
            hint="check the version (`npm view opencode-ai versions`) and the network",
        )
    binary = native_binary_in(prefix / "node_modules")
    if binary is None:
        raise InstallError(
            f"{NPM_PACKAGE}@{version} installed, but it holds no binary for this machine "
            f"(looked for {', '.join(native_package_names())})",
        )
    return binary


@dataclass(frozen=True)
class Health:
    """The server's answer to ``GET /global/health``."""

    healthy: bool
    version: str
    seconds: float


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def plain_http_tls() -> ssl.SSLContext:
    """The TLS settings of a client that only speaks plain HTTP to a server on loopback.

    The managed server is always ``http://`` (``Settings.opencode_base_url``). httpx
    would otherwise load certifi's bundle into every client (about 1 MB each, in the
    agent that holds two); this context verifies as strictly but trusts no one, so
    any TLS attempt fails closed.

    >>> plain_http_tls().verify_mode == ssl.CERT_REQUIRED
    True
    """
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class OpenCodeClient:
    """A small synchronous client of the OpenCode server's HTTP API.

    >>> client = OpenCodeClient("http://127.0.0.1:4096", Credentials("opencode", "pw"))
    >>> client.base_url
    'http://127.0.0.1:4096'
    """

    def __init__(self, base_url: str, credentials: Credentials, timeout: float = 1.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=(credentials.username, credentials.password),
            timeout=timeout,
            verify=plain_http_tls(),
        )

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, timeout: float | None = None) -> Any:
        try:
            response = self._http.get(path, timeout=timeout or self._http.timeout)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise unavailable(self.base_url, path, exc) from exc

    def health(self) -> Health:
        started = time.perf_counter()
        body = self.get("/global/health")
        return parse_health(body, time.perf_counter() - started)

    def sessions(self) -> list[dict[str, Any]]:
        return list(self.get("/session", timeout=10.0))

    def session_status(self) -> dict[str, Any]:
        return dict(self.get("/session/status"))


class AsyncOpenCodeClient:
    """The agent's asynchronous client: one connection pool, a timeout on every call."""

    def __init__(
        self, base_url: str, credentials: Credentials, timeout: float = 1.0, keepalive: int = 0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            auth=(credentials.username, credentials.password),
            timeout=timeout,
            # By default a fresh connection per probe: a pooled one may point at a server
            # that has since died or been replaced, and a probe should test accept() too.
            # The metrics sampler keeps ``keepalive`` connections: it asks every second.
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=keepalive),
            verify=plain_http_tls(),
        )
        where = urlsplit(self.base_url)
        self._host, self._port = where.hostname or "127.0.0.1", where.port or 80
        self._timeout = timeout
        basic = b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
        self._kept_head = f"Host: {where.netloc}\r\nAuthorization: Basic {basic}\r\n"
        self._request_head = self._kept_head + "Connection: close\r\n"
        self._kept: _Connection | None = None  # what ask() keeps between requests

    async def aclose(self) -> None:
        self._drop_kept()
        await self._http.aclose()

    def _drop_kept(self) -> None:
        if self._kept is not None:
            self._kept[1].close()
            self._kept = None

    async def get(self, path: str) -> Any:
        try:
            response = await self._http.get(path)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise unavailable(self.base_url, path, exc) from exc

    async def health(self) -> Health:
        """The liveness probe: ``GET /global/health`` on a connection of its own."""
        started = time.perf_counter()
        body = await self.probe("/global/health")
        return parse_health(body, time.perf_counter() - started)

    async def session_status(self) -> dict[str, Any]:
        """``GET /session/status``: the sessions that are not idle, by id. Asked beside
        every probe, so on one kept connection with asyncio's streams (:meth:`ask`)."""
        body = await self.ask("/session/status")
        if not isinstance(body, Mapping):
            raise OpenCodeUnavailable(
                f"GET {self.base_url}/session/status answered {body!r:.200}, not a JSON object"
            )
        return dict(body)

    async def events(
        self, path: str = "/global/event", silence: float = 30.0, skip: tuple[bytes, ...] = ()
    ) -> AsyncIterator[dict[str, Any]]:
        """The server's events (its server-sent ``data:`` lines, JSON-decoded) until the
        stream ends. A stream that fails, or says nothing for ``silence`` seconds (the
        server sends a heartbeat every 10 s), is an ``OpenCodeUnavailable`` error.

        A line holding any of ``skip`` (e.g. ``b'"type":"message.part.delta"'``: one
        event per streamed token) is passed over without being decoded. The stream is
        read on asyncio's streams, not httpx: under load the server sends hundreds of
        events a second, and httpx's parsing of each one cost a few percent of a core."""
        async with self._exchange(path, "text/event-stream") as (reader, headers):
            async for line in _lines(reader, headers, silence):
                if not line.startswith(b"data:") or any(part in line for part in skip):
                    continue
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    continue  # not JSON: not an event
                if isinstance(event, dict):
                    yield event

    async def probe(self, path: str) -> Any:
        """``GET path`` on a fresh connection, closed after (a probe tests accept() too),
        with asyncio's streams: a sixth of httpx's CPU a request, which an agent probing
        every second pays all day. Like httpx, the timeout applies to the connect and to
        each read, so a server that accepts but never answers fails in that time."""
        async with self._exchange(path, "application/json") as (reader, headers):
            async with asyncio.timeout(self._timeout):
                body = await _response_body(reader, headers)
            return json.loads(body)

    async def ask(self, path: str) -> Any:
        """``GET path`` on the connection the last ``ask`` kept (HTTP/1.1 keep-alive),
        or on a new one: no connect, accept and close a request, for what is asked
        every probe. A kept connection that the server has closed meanwhile (it
        restarted, or let it go idle) is replaced once; its timeouts are the probe's."""
        kept, self._kept = self._kept, None
        if kept is not None:
            try:
                return await self._ask_on(kept, path)
            except _StaleConnection:
                pass  # closed before it answered: ask once more, on a new connection
        return await self._ask_on(None, path)

    async def _ask_on(self, connection: _Connection | None, path: str) -> Any:
        reused, writer = connection is not None, None
        try:
            async with self._failures(path):
                async with asyncio.timeout(self._timeout) as deadline:
                    if connection is None:
                        connection = await asyncio.open_connection(self._host, self._port)
                    reader, writer = connection
                    request = f"GET {path} HTTP/1.1\r\n{self._kept_head}Accept: application/json"
                    writer.write(f"{request}\r\n\r\n".encode())
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                    except (asyncio.IncompleteReadError, ConnectionError) as exc:
                        if reused and not getattr(exc, "partial", b""):
                            raise _StaleConnection from exc
                        raise
                    deadline.reschedule(asyncio.get_running_loop().time() + self._timeout)
                    status, headers = _response_head(head)
                    body = await _response_body(reader, headers)
                if not 200 <= status < 300:
                    raise OpenCodeUnavailable(f"GET {self.base_url}{path} answered HTTP {status}")
                answer = json.loads(body)
            if _reusable(headers):
                if self._kept is not None:
                    self._kept[1].close()  # another ask kept one meanwhile
                self._kept, writer = (reader, writer), None
            return answer
        finally:
            if writer is not None:
                writer.close()

    @contextlib.asynccontextmanager
    async def _exchange(
        self, path: str, accept: str
    ) -> AsyncIterator[tuple[asyncio.StreamReader, dict[str, str]]]:
        """``GET path`` on a connection of its own: the reader after a 2xx answer's head,
        and its headers; every failure, in the request or in the caller's reading of
        the body, an ``OpenCodeUnavailable`` error; the connection closed after."""
        writer = None
        try:
            async with self._failures(path):
                async with asyncio.timeout(self._timeout):
                    reader, writer = await asyncio.open_connection(self._host, self._port)
                request = f"GET {path} HTTP/1.1\r\n{self._request_head}Accept: {accept}\r\n\r\n"
                writer.write(request.encode())
                async with asyncio.timeout(self._timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
                status, headers = _response_head(head)
                if not 200 <= status < 300:
                    raise OpenCodeUnavailable(f"GET {self.base_url}{path} answered HTTP {status}")
                yield reader, headers
        finally:
            if writer is not None:
                writer.close()

    @contextlib.asynccontextmanager
    async def _failures(self, path: str) -> AsyncIterator[None]:
        """Every failure of a request of ``path`` as an ``OpenCodeUnavailable`` error that
        says how it failed."""
        try:
            yield
        except TimeoutError as exc:
            raise OpenCodeUnavailable(f"GET {self.base_url}{path} timed out") from exc
        except ConnectionRefusedError as exc:
            raise OpenCodeUnavailable(f"GET {self.base_url}{path} refused the connection") from exc
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise unavailable(self.base_url, path, exc) from exc
        except ValueError as exc:  # not HTTP, or not JSON
            raise unavailable(self.base_url, path, exc) from exc


async def _lines(
    reader: asyncio.StreamReader, headers: Mapping[str, str], silence: float
) -> AsyncIterator[bytes]:
    """The lines of a streamed body (chunked or up to the end of the stream), without
    their line ends; a ``TimeoutError`` when nothing comes for ``silence`` seconds.
    One deadline moved along, not a ``wait_for`` a read: that made a task per event."""
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    loop = asyncio.get_running_loop()
    pending = b""
    async with asyncio.timeout(None) as deadline:
        while True:
            deadline.reschedule(loop.time() + silence)
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    return
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return
            deadline.reschedule(None)  # the caller's time with a line is not silence
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r")


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _StaleConnection(Exception):
    """A kept connection closed by the server before it answered anything."""


def _reusable(headers: Mapping[str, str]) -> bool:
    """Whether a connection may carry another request after this answer: its body was
    sized or chunked (not read up to the end of the stream), and no one said close."""
    if headers.get("connection", "").lower() == "close":
        return False
    return "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()


def _response_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and the headers (names in lower case) of an HTTP/1.1 response's head."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _response_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    """The body of a response: by its length, chunked, or up to the end of the stream."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size + 2)
            del body[-2:]
        return bytes(body)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


def parse_health(body: Any, seconds: float) -> Health:
    if not isinstance(body, Mapping) or body.get("healthy") is not True:
        raise OpenCodeUnavailable(f"server reports itself unhealthy: {body!r:.200}")
    return Health(healthy=True, version=str(body.get("version", "unknown")), seconds=seconds)


def unavailable(base_url: str, path: str, exc: Exception) -> OpenCodeUnavailable:
    if isinstance(exc, httpx.TimeoutException):
        what = "timed out"
    elif isinstance(exc, httpx.HTTPStatusError):
        what = f"answered HTTP {exc.response.status_code}"
    elif isinstance(exc, httpx.ConnectError):
        what = "refused the connection"
    else:
        what = f"failed ({type(exc).__name__})"
    return OpenCodeUnavailable(f"GET {base_url}{path} {what}")


# ---- how a client connects ------------------------------------------------------------

MASK = "********"


def client_commands(url: str, username: str, password: str | None) -> list[tuple[str, str]]:
    """What to type to connect each kind of client, as (what, command) pairs.

    The credentials never go into the URL: OpenCode's JS SDK refuses such a URL
    and ``opencode attach`` does not use them. ``password=None`` shows it masked.

    >>> dict(client_commands("http://127.0.0.1:4096", "opencode", None))["curl"]
    "curl -u 'opencode:********' http://127.0.0.1:4096/global/health"
    """
    secret = MASK if password is None else password
    pw = shlex.quote(secret)
    basic = MASK if password is None else b64encode(f"{username}:{password}".encode()).decode()
    user = "" if username == "opencode" else f"OPENCODE_SERVER_USERNAME={shlex.quote(username)} "
    env = f"{user}OPENCODE_SERVER_PASSWORD={pw}"
    return [
        ("nexus-ops (password kept out of sight)", "nexus-ops opencode attach"),
        ("opencode TUI", f"{env} opencode attach {url}"),
        (
            "opencode TUI, flags (seen by other users in ps)",
            f"opencode attach {url} -u {shlex.quote(username)} -p {pw}",
        ),
        ("opencode run", f'{env} opencode run --attach {url} "your message"'),
        (
            "JS SDK",
            f'createOpencodeClient({{ baseUrl: "{url}", '
            f'headers: {{ Authorization: "Basic {basic}" }} }})',
        ),
        ("curl", f"curl -u {shlex.quote(f'{username}:{secret}')} {url}/global/health"),
    ]


def attach_environment(username: str, password: str) -> dict[str, str]:
    """The variables that give ``opencode attach`` (or ``run --attach``) the credentials."""
    return {"OPENCODE_SERVER_USERNAME": username, "OPENCODE_SERVER_PASSWORD": password}
