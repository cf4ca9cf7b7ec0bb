"""Latency and time to first token of the real OpenCode server under a scripted load.

Starts the scripted model provider and a real ``opencode serve`` in a private HOME,
sends one warm-up prompt (a fresh server's first prompt pays for loading its
plugins), then for each session count in ``--sessions`` runs that many concurrent
sessions of ``--prompts`` prompts each, and prints p50/p99 of the latency and of
the time to first token, the errors and the wall time.

Usage: python benchmarks/bench_workload.py [--sessions 1,4,8] [--prompts 3]
       [--tokens 50] [--rate 100] [--delay 0.2] [--prefix DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench_supervisor import ROOT, environment

from nexus_ops.opencode import Credentials, native_binary_in
from nexus_ops.workload.config import write_provider_config
from nexus_ops.workload.driver import WorkloadResult, run_workload
from nexus_ops.workload.provider import ScriptedProvider
from nexus_ops.workload.script import Reply, Script

sys.path.insert(0, str(ROOT / "tests"))
from backup_helpers import DirectServer


def line(sessions: int, result: WorkloadResult) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    return (
        f"{sessions:>8} {len(result.prompts):>7} {ms(result.p50()):>8} {ms(result.p99()):>8} "
        f"{ms(result.first_token_p50()):>9} {ms(result.first_token_p99()):>9} "
        f"{len(result.errors):>6} {result.seconds:>7.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,4,8")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=50, help="tokens per reply")
    parser.add_argument("--rate", type=float, default=100.0, help="tokens per second")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds to the first token")
    parser.add_argument("--prefix", type=Path, default=ROOT / ".cache" / "opencode")
    args = parser.parse_args()
    binary = native_binary_in(args.prefix.resolve() / "node_modules")
    if binary is None:
        sys.exit(f"no OpenCode binary under {args.prefix}: run `make opencode` first")
    reply = Reply(tokens=args.tokens, tokens_per_second=args.rate, first_token_delay=args.delay)
    with tempfile.TemporaryDirectory() as tmp, ScriptedProvider(Script(default=reply)) as model:
        env = environment(Path(tmp), binary)
        write_provider_config(Path(env["HOME"]), model.base_url, Path(env["XDG_CONFIG_HOME"]))
        server = DirectServer(binary, env, int(env["NEXUS_OPENCODE_PORT"]), "bench")
        server.start()
        try:
            server.wait_healthy(60)
            credentials = Credentials("opencode", "bench")
            run_workload(server.url, credentials, 1, ["warm up"])
            print("sessions prompts  p50(ms)  p99(ms) ttft50(ms) ttft99(ms) errors wall(s)")
            for sessions in (int(n) for n in args.sessions.split(",")):
                result = run_workload(server.url, credentials, sessions, ["go"] * args.prompts)
                print(line(sessions, result))
        finally:
            server.stop()
    print(f"tokens served: {model.tokens_served()}")


if __name__ == "__main__":
    main()
