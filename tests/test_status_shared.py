"""One ``GET /session/status`` a probe: the sampler and the usage tracker take the
supervisor's answer. Counted at a small proxy in front of the real OpenCode server."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import pytest

from nexus_ops.config import load_settings
from nexus_ops.metrics.service import MetricsService
from nexus_ops.opencode import AsyncOpenCodeClient
from nexus_ops.store import Journal
from nexus_ops.store.db import Database
from nexus_ops.supervisor import Supervisor, store_desired

REQUEST_LINE = re.compile(rb"(?:^|\r\n)GET (\S+) HTTP/1\.1\r\n")


class CountingProxy:
    """Passes every connection on to the server at ``port``; counts the paths asked."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.paths: Counter[str] = Counter()
        self.connections: list[Counter[str]] = []  # the paths asked on each connection
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        asked: Counter[str] = Counter()
        self.connections.append(asked)
        await asyncio.gather(
            self._pump(reader, up_writer, asked),
            self._pump(up_reader, writer, None),
            return_exceptions=True,
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        asked: Counter[str] | None,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if asked is not None:
                    paths = [p.decode().split("?")[0] for p in REQUEST_LINE.findall(data)]
                    asked.update(paths)
                    self.paths.update(paths)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def test_a_probe_tick_asks_the_session_status_once_for_everyone(
    nexus_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**nexus_env, "NEXUS_METRICS_INTERVAL": "1", "NEXUS_MEMORY_LIMIT_MB": "0"}
    for name in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(name, env[name])  # the server the supervisor starts inherits them
    settings = load_settings(env)

    async def scenario() -> tuple[Counter[str], int, bool, int]:
        proxy = CountingProxy(settings.opencode_port)
        url = await proxy.start()
        database = Database(tmp_path / "nexus.db")
        journal = Journal(database)
        store_desired(journal, "running")  # started as an agent starts it: by its recovery
        supervisor = Supervisor(settings, journal)
        metrics = MetricsService(settings, supervisor)
        creds, timeout = supervisor.credentials, settings.probe_timeout
        # Every request of the agent's to the server goes through the proxy.
        supervisor.client = AsyncOpenCodeClient(url, creds, timeout=timeout)
        metrics.sampler.client = AsyncOpenCodeClient(url, creds, timeout=timeout, keepalive=1)
        metrics.usage.client = metrics.usage_client = AsyncOpenCodeClient(
            url, creds, timeout=10.0, keepalive=1
        )
        supervising = asyncio.create_task(supervisor.run())
        sampling: asyncio.Task[None] | None = None
        try:
            for _ in range(300):
                if supervisor.ready:
                    break
                await asyncio.sleep(0.1)
            assert supervisor.ready, supervisor.readiness_detail
            sampling = asyncio.create_task(metrics.run())
            for _ in range(100):  # the usage tracker's first check of the sessions
                if metrics.usage.counted:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.5)  # past the requests under way at the start
            proxy.paths.clear()
            earlier = [asked["/session/status"] for asked in proxy.connections]
            readings = metrics.sampler.latest
            await asyncio.sleep(6.0)
            took = dict(proxy.paths)
            now = [asked["/session/status"] for asked in proxy.connections]
            earlier += [0] * (len(now) - len(earlier))  # connections opened meanwhile
            carrying = sum(1 for was, is_ in zip(earlier, now, strict=True) if is_ > was)
            fresh = metrics.sampler.latest is not readings
            sessions = metrics.sampler.latest
            has_sessions = (
                sessions is not None
                and sessions.value("opencode_sessions", {"status": "idle"}) is not None
            )
            await metrics.usage.check()  # a check now takes the supervisor's answer too
            checked = Counter(proxy.paths) - Counter(took)
            return Counter(took), checked["/session/status"], fresh and has_sessions, carrying
        finally:
            if sampling is not None:
                sampling.cancel()
                await asyncio.gather(sampling, return_exceptions=True)
            await supervisor.stop()
            supervising.cancel()
            await asyncio.gather(supervising, return_exceptions=True)
            await supervisor.shutdown()
            proxy.close()
            metrics.close()
            database.close()

    took, asked_by_check, sampled, carrying = asyncio.run(scenario())
    probes = took["/global/health"]
    assert probes >= 4, took
    # One answer a probe, shared: before, every reading asked once more (as many again).
    assert took["/session/status"] <= probes + 1, took
    assert sampled, "the sampler kept reading the sessions by status"
    assert asked_by_check == 0
    # ... and on one kept connection, not a new one each time (a probe's own is new).
    assert took["/session/status"] >= 4 and carrying == 1, (took, carrying)
