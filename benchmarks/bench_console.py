"""How fast the console is ready in a browser, what its kernel holds, what a refresh costs.

Measures, with the real agent, the real OpenCode server and real Chromium, in a
private HOME whose metrics.db holds a week of history (synthesized, at the
sampler's rates):

- time to interactive (navigation to: the server's live state shown and its Stop
  button enabled) of the console served by ``nexus-ops console``, cold (a new
  browser profile: nothing cached) and warm (the same profile again);
- the same for a bare Voila notebook holding one button and one FigureWidget, the
  baseline: served with Voila's defaults, and with the console's own Voila options
  (a pre-heated kernel); ratios against both;
- the Metrics tab: from the click to all nine figures drawn with data;
- resident memory of Voila and of a console kernel, and of the bare one's;
- kernel time (CPU, and wall) of one refresh of all panels, measured inside a
  real kernel (the widgets' messages are serialized and sent on its iopub).

Usage: python benchmarks/bench_console.py [--runs 5] [--refreshes 20]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np
import psutil
from jupyter_client.manager import KernelManager
from playwright.sync_api import Browser, BrowserContext, sync_playwright

from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.opencode import native_binary_in
from nexus_ops.store.samples import SampleStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (the tests' Chromium, the same way)

DAY = 86400.0
CONSOLE_READY = """() => {
  const state = document.querySelector('.nx-server-state');
  const stop = document.querySelector('button.nx-stop');
  return state && state.textContent === 'running' && stop && !stop.disabled;
}"""
BARE_READY = """() => document.querySelector('.bare-button')
  && document.querySelector('.bare-figure .main-svg')"""
METRICS_DRAWN = """() => {
  const figures = [...document.querySelectorAll('.nx-figure')];
  return figures.length === 9 && figures.every((f) => {
    const gd = f.classList.contains('js-plotly-plot') ? f : f.querySelector('.js-plotly-plot');
    return gd && gd.data && gd.data.some(
      (t) => t.name !== 'restarts and crashes' && t.y && t.y.length > 0);
  });
}"""
BARE_NOTEBOOK = """\
import ipywidgets as widgets
import plotly.graph_objects as go

button = widgets.Button(description="Go")
button.add_class("bare-button")
figure = go.FigureWidget(go.Scatter(x=[1, 2, 3], y=[1, 3, 2]))
figure.add_class("bare-figure")
widgets.VBox([button, figure])
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(root: Path) -> dict[str, str]:
    binary = native_binary_in((ROOT / ".cache" / "opencode" / "node_modules").resolve())
    if binary is None:
        sys.exit("no OpenCode binary: run `make opencode` first")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    for name in ("home", "data", "config", "cache", "state", "nexus"):
        (root / name).mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(root / "home"), XDG_DATA_HOME=str(root / "data"),
        XDG_CONFIG_HOME=str(root / "config"), XDG_CACHE_HOME=str(root / "cache"),
        XDG_STATE_HOME=str(root / "state"), NEXUS_HOME=str(root / "nexus"),
        NEXUS_OPENCODE_BIN=str(binary), NEXUS_OPENCODE_PORT=str(free_port()),
        NEXUS_AGENT_PORT=str(free_port()), NEXUS_CONSOLE_PORT=str(free_port()),
    )  # fmt: skip
    return env


# ---- a week of history -------------------------------------------------------------


def synthesize_history(path: Path, end: float, days: float = 7.0) -> int:
    """What the sampler would have written in ``days``: every 5 s, probes every second."""
    rng = np.random.default_rng(7)
    store = SampleStore(path)
    every5 = np.arange(end - days * DAY, end, 5.0)
    every1 = np.arange(end - 2 * DAY, end, 1.0)  # the raw tier's 48 hours of probes
    n = len(every5)
    series: list[tuple[str, dict[str, str], np.ndarray, np.ndarray]] = [
        ("opencode_server_status", {}, every5, np.ones(n)),
        ("opencode_server_uptime_seconds", {}, every5, every5 - every5[0]),
        ("opencode_server_starts_total", {}, every5, np.ones(n)),
        ("opencode_process_resident_memory_bytes", {}, every5, walk(rng, n, 3.2e8, 4096)),
        ("nexus_agent_resident_memory_bytes", {}, every5, walk(rng, n, 1.6e8, 1024)),
        ("opencode_process_cpu_percent", {}, every5, rng.gamma(1.2, 2.0, n)),
        ("nexus_agent_cpu_percent", {}, every5, rng.gamma(1.0, 0.6, n)),
    ]
    for state, mean in (("ESTABLISHED", 3), ("LISTEN", 1), ("CLOSE_WAIT", 0.2), ("FIN_WAIT2", 0.1)):
        series.append(
            ("opencode_connections", {"state": state}, every5, rng.poisson(mean, n) * 1.0)
        )
    for status, mean in (("busy", 0.3), ("idle", 2), ("retry", 0.01)):
        series.append(("opencode_sessions", {"status": status}, every5, rng.poisson(mean, n) * 1.0))
    requests = "opencode_request_duration_seconds"
    series.append(
        (
            requests,
            {"path": "/global/health", "outcome": "ok"},
            every1,
            rng.gamma(2.0, 0.002, len(every1)),
        )
    )
    for path in ("/session", "/session/status"):
        series.append((requests, {"path": path, "outcome": "ok"}, every5, rng.gamma(2.0, 0.004, n)))
    total = 0
    for metric, labels, times, values in series:
        for lo in range(0, len(times), 17280):  # a day at 5 s a batch
            total += store.append_many(
                metric, labels, times[lo : lo + 17280], values[lo : lo + 17280]
            )
    store.flush()
    store.close()
    return total


def walk(rng: np.random.Generator, n: int, start: float, step: float) -> np.ndarray:
    return np.maximum(start / 2, start + np.cumsum(rng.integers(-2, 3, n) * step)).astype(float)


# ---- serving ------------------------------------------------------------------------


@dataclass
class Served:
    name: str
    process: subprocess.Popen[str]
    url: str
    log: Path

    def voila(self) -> psutil.Process:
        proc = psutil.Process(self.process.pid)
        if "voila" in " ".join(proc.cmdline()):
            return proc
        return next(p for p in proc.children() if "voila" in " ".join(p.cmdline()))

    def kernels(self) -> list[psutil.Process]:
        return [p for p in self.voila().children() if "ipykernel_launcher" in " ".join(p.cmdline())]

    def pool_fills(self) -> int:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return len(re.findall(r"Kernel pool of .* is filled", text))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def serve_console(env: dict[str, str]) -> Served:
    process = subprocess.Popen(
        [sys.executable, "-m", "nexus_ops", "console"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    url = read_url(process, r"^console: (\S+)")
    return Served("console", process, url, Path(env["NEXUS_HOME"]) / "logs" / "console.log")


def serve_bare(env: dict[str, str], folder: Path, preheat: bool) -> Served:
    folder.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(BARE_NOTEBOOK)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, folder / "bare.ipynb")
    port, token = free_port(), "bare-benchmark-token-0123456789abcdef"
    options = [f"--port={port}", "--no-browser", "--Voila.ip=127.0.0.1"]
    if preheat:
        options += ["--preheat_kernel=True", "--pool_size=1"]
    log = folder / "voila.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "voila", "bare.ipynb", *options, f"--token={token}"],
        env=env, cwd=folder, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/?token={token}"
    served = Served("bare" + (" (pre-heated)" if preheat else ""), process, url, log)
    wait(lambda: "is running at" in log.read_text(errors="replace"), 60)
    if preheat:
        wait(lambda: served.pool_fills() >= 1, 120)
    return served


def read_url(process: subprocess.Popen[str], pattern: str, timeout: float = 120.0) -> str:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        found = re.match(pattern, line.strip())
        if found:
            return found.group(1)
    raise SystemExit("the console printed no URL")


def wait(condition: Callable[[], object], timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:g} s")


# ---- measuring in the browser ---------------------------------------------------------


def time_to_interactive(context: BrowserContext, url: str, ready: str) -> float:
    page = context.new_page()
    try:
        started = time.perf_counter()
        page.goto(url, wait_until="commit")
        page.wait_for_function(ready, timeout=120_000, polling=20)
        return time.perf_counter() - started
    finally:
        page.close()


def visits(
    browser: Browser, served: Served, ready: str, runs: int, pooled: bool
) -> dict[str, list[float]]:
    """Cold visits (a fresh profile each) and warm ones (one profile, cache primed)."""
    found: dict[str, list[float]] = {"cold": [], "warm": []}
    warm_context = browser.new_context()
    visit(served, warm_context, ready, pooled)  # primes the cache
    for _ in range(runs):
        for kind in ("cold", "warm"):
            context = browser.new_context() if kind == "cold" else warm_context
            found[kind].append(visit(served, context, ready, pooled))
            if kind == "cold":
                context.close()
    warm_context.close()
    return found


def visit(served: Served, context: BrowserContext, ready: str, pooled: bool) -> float:
    """One timed visit; then wait until a pre-heated kernel is back in the pool."""
    fills = served.pool_fills()
    seconds = time_to_interactive(context, served.url, ready)
    if pooled:
        wait(lambda: served.pool_fills() > fills, 120)
    time.sleep(1.0)  # let the new kernel settle before the next visit
    return seconds


def metrics_tab(browser: Browser, served: Served, runs: int) -> list[float]:
    found = []
    context = browser.new_context()
    for _ in range(runs):
        fills = served.pool_fills()
        page = context.new_page()
        page.goto(served.url)
        page.wait_for_function(CONSOLE_READY, timeout=120_000)
        started = time.perf_counter()
        page.locator(".nx-tabs .lm-TabBar-tab", has_text="Metrics").click()
        page.wait_for_function(METRICS_DRAWN, timeout=120_000, polling=20)
        found.append(time.perf_counter() - started)
        page.close()
        wait(lambda before=fills: served.pool_fills() > before, 120)
        time.sleep(1.0)
    context.close()
    return found


def kernel_memory(browser: Browser, served: Served, ready: str) -> tuple[float, float]:
    """MiB resident of Voila and of its largest kernel, with a page open for 10 s."""
    page = browser.new_page()
    page.goto(served.url)
    page.wait_for_function(ready, timeout=120_000)
    time.sleep(10)
    kernel = max(p.memory_info().rss for p in served.kernels()) / 2**20
    voila = served.voila().memory_info().rss / 2**20
    page.close()
    return voila, kernel


# ---- one refresh of every panel, inside a kernel ----------------------------------------

REFRESH_CODE = """
import json, time
from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.ui.app import Console
settings = load_settings()
console = Console(AgentClient.from_settings(settings), settings)
console.refresh_all()
walls, cpus, per_panel = [], [], {{}}
for _ in range({n}):
    wall, cpu = time.perf_counter(), time.process_time()
    console.refresh_all()
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
for title, panel in console.panels.items():
    cpu = time.process_time()
    for _ in range({n}):
        panel.refresh()
    per_panel[title] = (time.process_time() - cpu) / {n}
print(json.dumps({{"wall": walls, "cpu": cpus, "panels": per_panel}}))
"""


def refresh_in_kernel(env: dict[str, str], n: int) -> dict[str, object]:
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=env, cwd=env["HOME"])
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        out: list[str] = []
        client.execute_interactive(
            textwrap.dedent(REFRESH_CODE.format(n=n)),
            timeout=300,
            output_hook=lambda msg: (
                out.append(msg["content"].get("text", "")) if msg["msg_type"] == "stream" else None
            ),
        )
        return dict(json.loads("".join(out).strip().splitlines()[-1]))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


# ---- report -------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def row(name: str, found: dict[str, list[float]]) -> str:
    return (
        f"{name:<28} cold {median(found['cold']):5.2f} s (min {min(found['cold']):.2f})"
        f"   warm {median(found['warm']):5.2f} s (min {min(found['warm']):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="visits of each kind (default 5)")
    parser.add_argument("--refreshes", type=int, default=20, help="refreshes timed (default 20)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-console-"))
    env = environment(root)
    settings = load_settings(env)
    started = time.perf_counter()
    samples = synthesize_history(settings.home / "metrics.db", time.time())
    print(f"history: {samples:,} samples of a week in {time.perf_counter() - started:.1f} s")
    served: list[Served] = []
    try:
        console = serve_console(env)
        served.append(console)
        with AgentClient.from_settings(settings, timeout=120) as client:
            print(f"server: {client.start().message}")
        wait(lambda: console.pool_fills() >= 1, 120)
        bare = serve_bare(env, root / "bare", preheat=False)
        bare_hot = serve_bare(env, root / "bare-hot", preheat=True)
        served += [bare, bare_hot]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            results = {
                "console": visits(browser, console, CONSOLE_READY, args.runs, pooled=True),
                "bare": visits(browser, bare, BARE_READY, args.runs, pooled=False),
                "bare_hot": visits(browser, bare_hot, BARE_READY, args.runs, pooled=True),
            }
            metrics = metrics_tab(browser, console, args.runs)
            memory = {
                "console": kernel_memory(browser, console, CONSOLE_READY),
                "bare": kernel_memory(browser, bare, BARE_READY),
            }
            browser.close()
        refresh = refresh_in_kernel(env, args.refreshes)
        report(results, metrics, memory, refresh)
    finally:
        for one in served:
            one.stop()
        subprocess.run(
            [sys.executable, "-m", "nexus_ops", "agent", "stop", "--stop-server"],
            env=env, capture_output=True, check=False, timeout=120,
        )  # fmt: skip


def report(
    results: dict[str, dict[str, list[float]]],
    metrics: list[float],
    memory: dict[str, tuple[float, float]],
    refresh: dict[str, object],
) -> None:
    print("\ntime to interactive (median of the runs)")
    print(row("console", results["console"]))
    print(row("bare notebook, Voila defaults", results["bare"]))
    print(row("bare notebook, pre-heated", results["bare_hot"]))
    for kind in ("cold", "warm"):
        console = median(results["console"][kind])
        print(
            f"  {kind}: console / bare = {console / median(results['bare'][kind]):.2f}x, "
            f"console / bare pre-heated = {console / median(results['bare_hot'][kind]):.2f}x"
            f"  (targets: <= 1.2x; warm <= 3 s)"
        )
    print(
        f"Metrics tab, click to 9 figures drawn: median {median(metrics):.2f} s, max {max(metrics):.2f} s"
    )
    print("\nresident memory")
    print(f"  Voila {memory['console'][0]:.0f} MiB, console kernel {memory['console'][1]:.0f} MiB")
    print(f"  Voila {memory['bare'][0]:.0f} MiB, bare kernel {memory['bare'][1]:.0f} MiB")
    cpu = [1000 * float(v) for v in refresh["cpu"]]
    wall = [1000 * float(v) for v in refresh["wall"]]
    print("\none refresh of all panels, in a kernel (target: < 100 ms of kernel time)")
    print(
        f"  CPU median {median(cpu):.0f} ms (p90 {np.percentile(cpu, 90):.0f} ms); "
        f"wall median {median(wall):.0f} ms (p90 {np.percentile(wall, 90):.0f} ms)"
    )
    panels = refresh["panels"]
    assert isinstance(panels, dict)
    print("  CPU by panel: " + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in panels.items()))


if __name__ == "__main__":
    main()
