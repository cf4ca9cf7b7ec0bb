"""What evaluating the alert rules costs the agent, against its sampling budget.

Fills the evaluator's window as a busy agent would (a reading of ~40 series every
second, a request observed every 0.2 s), then times one evaluation of the built-in
rules plus ``--extra`` more, and compares it with the sampler's interval (5 s),
the budget the evaluation shares with the sampling; also the webhook notifier's
cost per notification against a real local receiver.

Usage: python benchmarks/bench_alerts.py [--minutes 15] [--extra 20] [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from nexus_ops.alerts import AlertRule, AlertsConfig, AlertService, Notifier, Webhook
from nexus_ops.alerts.rules import default_rules
from nexus_ops.config import load_settings
from nexus_ops.store import Database, Journal

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
    rule = AlertRule(name="Bench", metric="opencode_server_status", op="<", value=1)
    journal = Journal(Database(Path(tempfile.mkdtemp()) / "nexus.db"))

    async def run() -> float:
        notifier = Notifier([Webhook(url)], journal)
        started = time.perf_counter()
        for _ in range(count):
            notifier.send(rule, "firing", 0.0, None)
        await notifier.drain(timeout=60)
        return (time.perf_counter() - started) / count

    try:
        return asyncio.run(run())
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="window of samples to fill")
    parser.add_argument("--extra", type=int, default=20, help="rules beside the built-in ones")
    parser.add_argument("--rounds", type=int, default=200, help="evaluations to time")
    args = parser.parse_args()
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
