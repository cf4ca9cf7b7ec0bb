"""The same scripted workload against a bare OpenCode server and one under nexus-ops.

In one run, with the scripted model provider (50 tokens a reply at 100 tokens/s,
0.2 s to the first one) and OpenCode's plugin prepared once for both sides:

- a bare ``opencode serve`` in its own private HOME, and a real agent
  (``nexus-ops agent run`` with ``NEXUS_METRICS_INTERVAL=1``) running its own
  server in another, each warmed up with one prompt;
- for each session count in ``--sessions``: rounds of that many concurrent
  sessions sending ``--prompts`` prompts each, bare and nexus-ops taking turns
  (bare first in even rounds, nexus-ops first in odd ones, so that the machine's
  noise falls on both alike) until each side has run ``--duration`` seconds;
- printed per count: p50/p99 of the prompt latency and of the time to first
  token, bare and under nexus-ops, and their ratio (target: at most 1.05); over
  the nexus-ops rounds, the agent's CPU (% of one core) and peak RSS (targets:
  1 %, 80 MB) and the p99 of its liveness probes (its own request histogram);
  the load average;
- last, one more nexus-ops round at the largest count during which the agent
  makes a backup (``POST /api/v1/backups``, what ``nexus-ops backup create``
  asks of it) and verifies it: the backup's duration and the verification.

Usage: python benchmarks/bench_workload.py [--sessions 1,4,16] [--duration 120]
       [--prompts 5] [--tokens 50] [--rate 100] [--delay 0.2] [--prefix DIR]
A quick run: --duration 0 --prompts 2 (one round a side).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench_agent_cost import Agent  # sibling scripts: benchmarks/
from bench_supervisor import ROOT, environment
from prometheus_client.parser import text_string_to_metric_families

from nexus_ops.backup import Manifest, VerifyReport
from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.opencode import Credentials, native_binary_in
from nexus_ops.paths import Layout
from nexus_ops.workload.config import write_provider_config
from nexus_ops.workload.driver import WorkloadResult, run_workload
from nexus_ops.workload.provider import ScriptedProvider
from nexus_ops.workload.script import Reply, Script

sys.path.insert(0, str(ROOT / "tests"))
from backup_helpers import DirectServer, install_config, prepare_opencode_config
from conftest import kill_everything_of

HEALTH = "/global/health"
REQUESTS = "opencode_request_duration_seconds"


def health_buckets(client: AgentClient) -> dict[float, float]:
    """Cumulative counts of the agent's liveness probes by bucket bound (``le``)."""
    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(client.metrics_text()):
        if family.name != REQUESTS:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("path") == HEALTH:
                le = float(sample.labels["le"])
                counts[le] = counts.get(le, 0.0) + sample.value
    return counts


def bucket_quantile(counts: dict[float, float], q: float) -> float | None:
    """The bound of the bucket that holds quantile ``q`` of cumulative ``counts``."""
    total = counts.get(float("inf"), 0.0)
    if total <= 0:
        return None
    return next(le for le in sorted(counts) if counts[le] >= q * total)


@dataclass
class AgentCost:
    """What the agent used over the nexus-ops rounds of one session count."""

    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    probes: dict[float, float] = field(default_factory=dict)  # bucket deltas

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_seconds / max(self.wall_seconds, 1e-9)

    def add_probes(self, before: dict[float, float], after: dict[float, float]) -> None:
        for le, count in after.items():
            self.probes[le] = self.probes.get(le, 0.0) + count - before.get(le, 0.0)


@contextmanager
def metered(agent: Agent, cost: AgentCost, every: float = 0.25) -> Iterator[None]:
    """Add the agent's CPU, wall time, peak RSS and probes over the block to ``cost``."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every):
            cost.peak_rss_mb = max(cost.peak_rss_mb, agent.rss_mb())

    probes, cpu, wall = health_buckets(agent.client), agent.cpu(), time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        cost.cpu_seconds += agent.cpu() - cpu
        cost.wall_seconds += time.monotonic() - wall
        cost.peak_rss_mb = max(cost.peak_rss_mb, agent.rss_mb())
        cost.add_probes(probes, health_buckets(agent.client))


@dataclass
class Side:
    """One server under the workload, and what its rounds gave at each session count."""

    name: str
    url: str
    credentials: Credentials
    agent: Agent | None = None
    results: dict[int, list[WorkloadResult]] = field(default_factory=dict)
    costs: dict[int, AgentCost] = field(default_factory=dict)

    def run(self, sessions: int, prompts: int) -> WorkloadResult:
        if self.agent is None:
            result = self._send(sessions, prompts)
        else:
            with metered(self.agent, self.costs.setdefault(sessions, AgentCost())):
                result = self._send(sessions, prompts)
        self.results.setdefault(sessions, []).append(result)
        return result

    def _send(self, sessions: int, prompts: int) -> WorkloadResult:
        return run_workload(self.url, self.credentials, sessions, ["go"] * prompts)

    def merged(self, sessions: int) -> WorkloadResult:
        rounds = self.results.get(sessions, [])
        prompts = [prompt for result in rounds for prompt in result.prompts]
        return WorkloadResult(prompts, sum(result.seconds for result in rounds))


def alternate(sides: Sequence[Side], sessions: int, prompts: int, duration: float) -> int:
    """Rounds at ``sessions``, the sides taking turns, until each has run ``duration`` s."""
    rounds = 0
    while rounds == 0 or min(side.merged(sessions).seconds for side in sides) < duration:
        for side in sides if rounds % 2 == 0 else list(reversed(sides)):
            side.run(sessions, prompts)
        rounds += 1
    return rounds


@dataclass
class BackupUnderLoad:
    manifest: Manifest
    seconds: float
    report: VerifyReport
    round: WorkloadResult


def backup_under_load(side: Side, sessions: int, prompts: int, lead: float) -> BackupUnderLoad:
    """A nexus-ops round at ``sessions``; ``lead`` s into it the agent backs up and verifies."""
    assert side.agent is not None
    client = side.agent.client
    done: dict[str, object] = {}

    def back_up() -> None:
        time.sleep(lead)
        started = time.monotonic()
        done["manifest"] = client.create_backup()
        done["seconds"] = time.monotonic() - started
        done["report"] = client.verify_backup(done["manifest"].id)  # type: ignore[attr-defined]

    worker = threading.Thread(target=back_up)
    worker.start()
    result = side._send(sessions, prompts)
    worker.join()
    return BackupUnderLoad(done["manifest"], done["seconds"], done["report"], result)  # type: ignore[arg-type]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def ratio(over: float | None, base: float | None) -> str:
    return "-" if over is None or not base else f"{over / base:.3f}"


def figures(result: WorkloadResult) -> list[float | None]:
    return [result.p50(), result.p99(), result.first_token_p50(), result.first_token_p99()]


def report_level(sessions: int, bare: Side, nexus: Side, rounds: int) -> None:
    rows = {side.name: side.merged(sessions) for side in (bare, nexus)}
    for name, result in rows.items():
        cells = " ".join(f"{ms(v):>9}" for v in figures(result))
        print(
            f"{sessions:>8} {name:<9} {len(result.prompts):>7} {cells} "
            f"{len(result.errors):>6} {result.seconds:>7.1f}"
        )
    pairs = zip(figures(rows[nexus.name]), figures(rows[bare.name]), strict=True)
    cells = " ".join(f"{ratio(over, base):>9}" for over, base in pairs)
    print(f"{sessions:>8} {'ratio':<9} {rounds:>5} r {cells}   (target <= 1.050)")
    cost = nexus.costs[sessions]
    probes = cost.probes.get(float("inf"), 0.0)
    print(
        f"{'':>8} agent: CPU {cost.cpu_percent:.2f} % of a core (target <= 1 %), peak RSS "
        f"{cost.peak_rss_mb:.1f} MB (target <= 80 MB), probe p99 <= "
        f"{ms(bucket_quantile(cost.probes, 0.99))} ms ({probes:.0f} probes); "
        f"load average {load()}"
    )


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def report_backup(sessions: int, found: BackupUnderLoad) -> None:
    manifest, report = found.manifest, found.report
    verdict = "OK" if report.ok else "FAILED: " + "; ".join(report.problems[:3])
    integrity = ", ".join(f"{p}: {r}" for p, r in report.integrity.items()) or "no database"
    print(
        f"backup under {sessions} sessions: {manifest.id}, {len(manifest.files)} files, "
        f"{found.seconds:.2f} s through the API ({manifest.duration_seconds:.2f} s in its "
        f"manifest), {manifest.sessions} sessions; verify {verdict} ({report.checked_files} "
        f"members; integrity {integrity}; {report.seconds:.2f} s); that round: p50 "
        f"{ms(found.round.p50())} ms, p99 {ms(found.round.p99())} ms, "
        f"{len(found.round.errors)} errors"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,4,16", help="session counts, comma-separated")
    parser.add_argument(
        "--duration", type=float, default=120.0, help="seconds of load per side and count"
    )
    parser.add_argument("--prompts", type=int, default=5, help="prompts per session per round")
    parser.add_argument("--tokens", type=int, default=50, help="tokens per reply")
    parser.add_argument("--rate", type=float, default=100.0, help="tokens per second")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds to the first token")
    parser.add_argument("--prefix", type=Path, default=ROOT / ".cache" / "opencode")
    args = parser.parse_args()
    try:
        args.counts = [int(n) for n in args.sessions.split(",")]
    except ValueError:
        parser.error(f"--sessions {args.sessions!r} is not a list of numbers, e.g. 1,4,16")
    if min(args.counts) < 1 or args.prompts < 1 or args.duration < 0:
        parser.error("--sessions and --prompts must be at least 1, --duration at least 0")
    return args


def prepared_env(root: Path, binary: Path, template: Path, model_url: str) -> dict[str, str]:
    """A private environment with the prepared OpenCode config, on the scripted model."""
    env = environment(root, binary)
    install_config(template, env)
    write_provider_config(Path(env["HOME"]), model_url, Path(env["XDG_CONFIG_HOME"]))
    return env


def start_nexus(env: dict[str, str]) -> Side:
    agent = Agent({**env, "NEXUS_METRICS_INTERVAL": "1"})
    if not agent.client.start(wait=True).ok:
        raise SystemExit("the agent did not start its server")
    settings = load_settings(env)
    password = Layout(settings.home).server_password_file.read_text().strip()
    credentials = Credentials(settings.opencode_username, password)
    return Side("nexus-ops", settings.opencode_base_url, credentials, agent)


def bench(args: argparse.Namespace, binary: Path, root: Path, model: ScriptedProvider) -> None:
    template = prepare_opencode_config(binary, root / "template")
    envs = [prepared_env(root / n, binary, template, model.base_url) for n in ("bare", "nexus")]
    server = DirectServer(binary, envs[0], int(envs[0]["NEXUS_OPENCODE_PORT"]), "bench")
    try:
        server.start()
        server.wait_healthy(60)
        bare = Side("bare", server.url, Credentials("opencode", "bench"))
        nexus = start_nexus(envs[1])
        for side in (bare, nexus):
            side._send(1, 1)  # a fresh server's first prompt loads its plugins
        print(f"load average at the start: {load()}")
        print("sessions side      prompts   p50(ms)   p99(ms) ttft50(ms) ttft99(ms) errors wall(s)")
        for sessions in args.counts:
            rounds = alternate([bare, nexus], sessions, args.prompts, args.duration)
            report_level(sessions, bare, nexus, rounds)
        top = max(args.counts)
        report_backup(top, backup_under_load(nexus, top, args.prompts, lead=2.0))
        nexus.agent.client.stop()  # type: ignore[union-attr]
        nexus.agent.stop()  # type: ignore[union-attr]
    finally:
        server.stop()
        for env in envs:
            kill_everything_of(env)
    print(f"tokens served: {model.tokens_served()}; load average at the end: {load()}")


def main() -> None:
    args = parse_args()
    binary = native_binary_in(args.prefix.resolve() / "node_modules")
    if binary is None:
        sys.exit(f"no OpenCode binary under {args.prefix}: run `make opencode` first")
    reply = Reply(tokens=args.tokens, tokens_per_second=args.rate, first_token_delay=args.delay)
    with tempfile.TemporaryDirectory() as tmp, ScriptedProvider(Script(default=reply)) as model:
        bench(args, binary, Path(tmp), model)


if __name__ == "__main__":
    main()
