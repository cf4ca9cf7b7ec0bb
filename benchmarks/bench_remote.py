"""What the HTTPS entry adds to OpenCode's API and event stream, against going direct.

One run, one agent with ``NEXUS_ENTRY=on`` (real Caddy asking the agent's ``/entry/check``
for each request) and its real OpenCode server on the scripted model provider. A device
is paired through the entry's own form; then, alternating entry and direct in each round
so that both see the same machine:
- API latency (p50/p99) of ``GET /session`` and ``GET /config`` on a kept connection;
- time to the first event of ``GET /event`` (OpenCode's ``server.connected``);
- time from ``prompt_async`` to the first streamed part of the answer on the event stream;
- a new connection's first request (the TLS handshake, once per connection).
Target: the entry at most 1.1x direct, plus the handshake once per connection.

Usage: python benchmarks/bench_remote.py [--rounds 200] [--streams 20]
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_agent_cost import Agent  # sibling scripts: benchmarks/
from bench_entry import handshake
from bench_supervisor import ROOT, free_port, poll
from bench_workload import prepared_env

from nexus_ops.config import load_settings
from nexus_ops.entry.tls import EntryFiles
from nexus_ops.opencode import native_binary_in
from nexus_ops.paths import Layout
from nexus_ops.workload.provider import ScriptedProvider
from nexus_ops.workload.script import Reply, Script

sys.path.insert(0, str(ROOT / "tests"))
from backup_helpers import prepare_opencode_config
from conftest import kill_everything_of

ANSWER = "streamed through the entry"


@dataclass
class Side:
    name: str
    connect: Callable[[], httpx.Client]
    client: httpx.Client = field(init=False)
    times: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = self.connect()

    def add(self, what: str, seconds: float) -> None:
        self.times.setdefault(what, []).append(seconds)


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def get_ok(client: httpx.Client, path: str) -> None:
    client.get(path).raise_for_status()


def first_event(client: httpx.Client) -> float:
    """Seconds from asking for ``/event`` to its first ``data:`` line."""
    started = time.perf_counter()
    with client.stream("GET", "/event", timeout=30) as events:
        events.raise_for_status()
        for line in events.iter_lines():
            if line.startswith("data: "):
                return time.perf_counter() - started
    raise RuntimeError("the event stream ended before its first event")


def first_part(client: httpx.Client) -> float:
    """Seconds from ``prompt_async`` to the first part of the answer on the event stream."""
    session = client.post("/session", json={}).json()["id"]
    with client.stream("GET", "/event", timeout=60) as events:
        lines = events.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # connected
        body = {"parts": [{"type": "text", "text": "answer me"}]}
        started = time.perf_counter()
        client.post(f"/session/{session}/prompt_async", json=body).raise_for_status()
        for line in lines:
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            part = event.get("properties", {}).get("part", {})
            if (
                event.get("type") == "message.part.updated"
                and part.get("sessionID") == session
                and part.get("type") == "text"
                and part.get("text")
            ):
                return time.perf_counter() - started
    raise RuntimeError("the event stream ended before the answer")


def pair(base: str, trust: ssl.SSLContext, agent: Agent) -> str:
    """A device session through the entry's pairing form: the ``nexus_device`` cookie."""
    code = agent.client.create_pairing(name="bench").code
    with httpx.Client(base_url=base, verify=trust) as client:
        answer = client.post("/_nexus/pair", data={"code": code, "next": "/"})
        if answer.status_code != 303:
            raise SystemExit(f"pairing through the entry failed: {answer.status_code}")
        return client.cookies["nexus_device"]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(entry: Side, direct: Side) -> None:
    print(f"{'measure':34} {'direct p50/p99 (ms)':>21} {'entry p50/p99 (ms)':>20} {'p50 ratio':>9}")
    for what, values in direct.times.items():
        through = entry.times[what]
        d50, d99 = 1000 * quantile(values, 0.5), 1000 * quantile(values, 0.99)
        e50, e99 = 1000 * quantile(through, 0.5), 1000 * quantile(through, 0.99)
        print(f"{what:34} {d50:10.2f} /{d99:8.2f} {e50:9.2f} /{e99:8.2f} {e50 / d50:8.2f}x")


def bench(args: argparse.Namespace, binary: Path, root: Path, model: ScriptedProvider) -> None:
    template = prepare_opencode_config(binary, root / "template")
    env = prepared_env(root / "nexus", binary, template, model.base_url)
    port = free_port()
    env.update(
        NEXUS_ENTRY="on",
        NEXUS_ENTRY_PORT=str(port),
        NEXUS_ENTRY_BIND="127.0.0.1",
        NEXUS_ENTRY_HOSTS="localhost",
    )
    agent = Agent(env)
    try:
        if not agent.client.start(wait=True).ok:
            raise SystemExit("the agent did not start its server")
        settings = load_settings(env)
        files = EntryFiles.of(settings)
        poll(lambda: handshake(port, files))
        trust = ssl.create_default_context(cafile=str(files.root_cert))
        base = f"https://localhost:{port}"
        cookie = pair(base, trust, agent)
        password = Layout(settings.home).server_password_file.read_text().strip()
        auth = (settings.opencode_username, password)
        sides = [
            Side("entry", lambda: httpx.Client(base_url=base, verify=trust, timeout=30,
                                               cookies={"nexus_device": cookie})),
            Side("direct", lambda: httpx.Client(base_url=settings.opencode_base_url,
                                                auth=auth, timeout=30)),
        ]  # fmt: skip
        for side in sides:  # warm: the first prompt of a fresh server loads its plugins
            first_part(side.client)
            get_ok(side.client, "/session")
        for _ in range(args.rounds):
            for side in sides:
                side.add("GET /session", timed(lambda c=side.client: get_ok(c, "/session")))
                side.add("GET /config", timed(lambda c=side.client: get_ok(c, "/config")))
        for _ in range(args.streams):
            for side in sides:
                side.add("first event of /event", first_event(side.client))
                side.add("prompt to first answer part", first_part(side.client))
        for _ in range(args.streams):
            for side in sides:
                fresh = side.connect()
                side.add(
                    "new connection + GET /session", timed(lambda c=fresh: get_ok(c, "/session"))
                )
                fresh.close()
        report(*sides)
        print(f"({args.rounds} API rounds, {args.streams} streams and new connections a side)")
        for side in sides:
            side.client.close()
        agent.client.stop()
    finally:
        agent.stop()
        kill_everything_of(env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--prefix", type=Path, default=ROOT / ".cache" / "opencode")
    args = parser.parse_args()
    if args.rounds < 1 or args.streams < 1:
        parser.error("--rounds and --streams must be at least 1")
    binary = native_binary_in(args.prefix.resolve() / "node_modules")
    if binary is None:
        sys.exit(f"no OpenCode binary under {args.prefix}: run `make opencode` first")
    reply = Reply(text=ANSWER, tokens_per_second=200)
    with (
        tempfile.TemporaryDirectory() as tmp,
        ScriptedProvider(Script(default=reply)) as model,
    ):
        bench(args, binary, Path(tmp), model)


if __name__ == "__main__":
    main()
