"""What evaluating the alert rules costs the agent, against its sampling budget.

Fills the evaluator's window as a busy agent would (a reading of ~40 series every
second, a request observed every 0.2 s), then times one evaluation of the built-in
rules plus ``--extra`` more, and compares it with the sampler's interval (5 s),
the budget the evaluation shares with the sampling; also the webhook notifier's
cost per notification against a real local receiver.

``--storm`` measures an alert storm instead, on a real agent supervising the real
OpenCode server: ``--rules`` rules (300) that all fire at once and keep flipping,
two receivers (one that never answers, one that answers after 2 s), and over
``--window`` seconds the agent's CPU, the latency of its ``/health`` (p50, p99,
max), the latency of the supervisor's probes (p99, from its request histogram),
the notifications the receivers got and whether the server was declared hung.

Usage: python benchmarks/bench_alerts.py [--minutes 15] [--extra 20] [--rounds 200]
       python benchmarks/bench_alerts.py --storm [--rules 300] [--window 60] [--prefix DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
from bench_supervisor import ROOT, agent_cost, environment, poll

from nexus_ops.alerts import AlertRule, AlertsConfig, AlertService, Notifier, Webhook
from nexus_ops.alerts.notify import Grouping
from nexus_ops.alerts.rules import default_rules
from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.opencode import native_binary_in
from nexus_ops.store import Database, Journal

sys.path.insert(0, str(ROOT / "tests"))
from alert_receiver import Receiver, receiver

SERIES = (
    [("opencode_server_status", {}), ("opencode_server_starts_total", {})]
    + [(f"opencode_process_{n}", {}) for n in ("resident_memory_bytes", "threads", "open_fds")]
    + [("opencode_connections", {"state": s}) for s in ("ESTABLISHED", "CLOSE_WAIT", "LISTEN")]
    + [("opencode_sessions", {"status": s}) for s in ("idle", "busy", "retry")]
    + [(f"nexus_extra_{i}", {"n": str(i)}) for i in range(30)]
)


def extra_rules(count: int) -> list[AlertRule]:
    kinds = ["last", "max", "mean", "p95"]
    return [
        AlertRule(
            name=f"Extra{i}",
            metric=f"nexus_extra_{i % 30}",
            aggregate=kinds[i % 4],
            window=300,
            value=1e9,
        )
        for i in range(count)
    ]


def filled_service(minutes: float, extra: int, journal: Journal) -> tuple[AlertService, float]:
    settings = load_settings({"NEXUS_HOME": tempfile.mkdtemp()})
    rules = default_rules(settings) + extra_rules(extra)
    service = AlertService(AlertsConfig(rules=rules), journal, sample_interval=1.0)
    now = time.time()
    start = now - minutes * 60
    for second in range(int(minutes * 60)):
        t = start + second
        service.window.add_reading(t, [(m, lab, float(second % 97)) for m, lab in SERIES])
        for tick in range(5):
            service.window.observe(
                "opencode_request_duration_seconds",
                {"path": "/global/health", "outcome": "ok"},
                t + tick * 0.2,
                0.003 + (second % 7) * 0.001,
            )
    return service, now


def time_evaluations(service: AlertService, now: float, rounds: int) -> list[float]:
    took = []
    for i in range(rounds):
        started = time.perf_counter()
        service.evaluate(now=now + i * 0.001)
        took.append(time.perf_counter() - started)
    return took


def notify_cost(count: int) -> float:
    class Ok(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    rules = [
        AlertRule(name=f"Bench{i}", metric="opencode_server_status", op="<", value=1)
        for i in range(count)
    ]
    journal = Journal(Database(Path(tempfile.mkdtemp()) / "nexus.db"))

    async def run() -> float:
        # One group per alert: ``count`` notifications, sent one after another.
        notifier = Notifier([Webhook(url)], journal, grouping=Grouping(by=("alertname",)))
        started = time.perf_counter()
        for rule in rules:
            notifier.send(rule, "firing", 0.0, None)
        await notifier.drain(timeout=60)
        return (time.perf_counter() - started) / count

    try:
        return asyncio.run(run())
    finally:
        server.shutdown()
        server.server_close()


def storm_rules(count: int, hang: str, slow: str) -> str:
    """``count`` rules that fire at once; every other one flips with the request latency."""
    lines = ["defaults: false", "rules:"]
    for i in range(count):
        if i % 2:
            cond = "{metric: opencode_request_duration_seconds, aggregate: last, window: 2s, "
            cond += f"op: '>', value: {0.0005 + i * 0.00002:.5f}"
        else:
            cond = "{metric: opencode_process_threads, op: '>', value: 0"
        lines.append(f"  - {cond}, name: Storm{i:03d}, severity: warning}}")
    lines += ["webhooks:", f"  - url: {hang}", f"  - url: {slow}"]
    return "\n".join(lines) + "\n"


def probe_p99(metrics: str) -> tuple[str, int]:
    """The p99 bucket of the supervisor's probes of /global/health, and their count."""
    buckets: list[tuple[float, float]] = []
    for line in metrics.splitlines():
        if line.startswith("opencode_request_duration_seconds_bucket") and "/global/health" in line:
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    totals: dict[float, float] = {}
    for le, count in buckets:  # ok and error outcomes are separate series
        totals[le] = totals.get(le, 0.0) + count
    ordered = sorted(totals.items())
    total = ordered[-1][1] if ordered else 0.0
    bound = next((le for le, n in ordered if n >= 0.99 * total), float("inf"))
    return f"<= {bound:g} s" if bound != float("inf") else "> 10 s", int(total)


def health_latencies(url: str, window: float) -> list[float]:
    took = []
    with httpx.Client(timeout=30.0) as http:
        started = time.monotonic()
        while time.monotonic() - started < window:
            t0 = time.perf_counter()
            try:
                http.get(url)
                took.append(time.perf_counter() - t0)
            except httpx.HTTPError:
                took.append(30.0)
            time.sleep(0.1)
    return took


def storm(count: int, window: float, prefix: Path) -> None:
    binary = native_binary_in(prefix / "node_modules")
    if binary is None:
        sys.exit("no OpenCode binary: run `make opencode` first")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        hang: Receiver = stack.enter_context(receiver(hang=True))
        slow: Receiver = stack.enter_context(receiver(delay=2.0))
        env = environment(Path(tmp), binary)
        rules = Path(tmp) / "alerts.yml"
        rules.write_text(storm_rules(count, hang.url, slow.url))
        env.update(NEXUS_ALERTS_FILE=str(rules), NEXUS_ALERT_INTERVAL="0.5")
        env.update(NEXUS_METRICS_INTERVAL="1")
        agent = subprocess.Popen(
            [sys.executable, "-m", "nexus_ops", "agent", "run"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        settings = load_settings(env)
        client = AgentClient.from_settings(settings, timeout=90)
        try:
            poll(lambda: client.health() is not None, timeout=60)
            assert client.start().ok
            firing = f"{count} rules firing"
            poll(lambda: sum(r.state == "firing" for r in client.alerts().rules) > count / 2, 60)
            print(f"storm: {firing} (about), receivers: one hangs, one answers in 2 s")
            base = f"http://{settings.agent_host}:{settings.agent_port}"
            costs: list[tuple[float, float]] = []
            sampler = threading.Thread(
                target=lambda: costs.append(agent_cost(agent.pid, window)), daemon=True
            )
            sampler.start()
            took = sorted(health_latencies(f"{base}/health", window))
            sampler.join()
            p99 = took[min(len(took) - 1, int(0.99 * len(took)))]
            print(f"agent CPU over {window:g} s: {costs[0][0]:.1f} % of one core")
            print(
                f"/health latency: p50 {statistics.median(took) * 1000:.1f} ms, "
                f"p99 {p99 * 1000:.1f} ms, max {took[-1] * 1000:.1f} ms ({len(took)} requests)"
            )
            bound, probes = probe_p99(client.metrics_text())
            print(f"probe latency p99: {bound} ({probes} probes)")
            hung = client.events(kinds=["hung", "restart"], limit=1000)
            print(f"hung or restart events: {len(hung)}")
            print(
                f"notifications received: hanging {len(hang.received)} "
                f"({len(hang.alerts())} alerts), slow {len(slow.received)} "
                f"({len(slow.alerts())} alerts)"
            )
        finally:
            client.close()
            with_stop(agent)


def with_stop(agent: subprocess.Popen[bytes]) -> None:
    """Stop the agent, then the server it left running."""
    children = psutil.Process(agent.pid).children(recursive=True)
    agent.terminate()
    agent.wait(timeout=60)
    for child in children:
        child.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="window of samples to fill")
    parser.add_argument("--extra", type=int, default=20, help="rules beside the built-in ones")
    parser.add_argument("--rounds", type=int, default=200, help="evaluations to time")
    parser.add_argument("--storm", action="store_true", help="measure an alert storm instead")
    parser.add_argument("--rules", type=int, default=300, help="rules of the storm")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of the storm")
    parser.add_argument(
        "--prefix", type=Path, default=ROOT / ".cache" / "opencode", help="OpenCode's npm prefix"
    )
    args = parser.parse_args()
    if args.storm:
        storm(args.rules, args.window, args.prefix)
        return
    journal = Journal(Database(Path(tempfile.mkdtemp()) / "nexus.db"))
    service, now = filled_service(args.minutes, args.extra, journal)
    points = sum(len(p) for p in service.window._points.values())
    took = time_evaluations(service, now, args.rounds)
    median, p95 = statistics.median(took), sorted(took)[int(0.95 * len(took))]
    budget = 5.0
    print(f"rules: {len(service.rules)}; window: {args.minutes:g} min, {points} points")
    print(f"one evaluation: median {median * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms")
    print(
        f"share of the 5 s sampling interval: {median / budget:.4%} (ratio {budget / median:,.0f}x)"
    )
    per = notify_cost(100)
    print(f"one webhook notification to a local receiver: {per * 1000:.2f} ms")


if __name__ == "__main__":
    main()
