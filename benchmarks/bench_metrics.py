"""Measure the metrics store, its queries against Prometheus, figures, and the sampler's CPU.

    python benchmarks/bench_metrics.py            # everything (about 3 minutes)
    python benchmarks/bench_metrics.py --quick    # 1 day of history, 10 s of CPU

Prints:
- ingest rate, batched (append_many + flush) and sampler-like (40 series a tick);
- a 7-day query of one 1 s series (about 605,000 points) down to 2,000 points,
  in metrics.db and in a real Prometheus holding the same data (backfilled with
  ``promtool tsdb create-blocks-from openmetrics``), and their ratio;
- bytes on disk per raw sample;
- the cost of refreshing a figure from a 2,000-point frame;
- the agent's CPU while sampling a real OpenCode server every second, against
  the same agent sampling once an hour.

Targets: >= 200,000 samples/s; the 7-day query <= 150 ms and no slower than
Prometheus; <= 16 bytes per raw sample; sampling at 1 s under 1 % of one core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from prometheus_helpers import running_prometheus  # noqa: E402

from nexus_ops.metrics import figures  # noqa: E402
from nexus_ops.metrics.backends import MetricQuery, SQLiteBackend  # noqa: E402
from nexus_ops.metrics.frames import concat_frames, tidy_frame  # noqa: E402
from nexus_ops.metrics.prometheus import PrometheusBackend  # noqa: E402
from nexus_ops.store.samples import Retention, SampleStore  # noqa: E402

METRIC = "opencode_process_resident_memory_bytes"
DAY = 86400


def timed(fn: Callable[[], object], repeat: int = 7) -> tuple[float, float]:
    """(first run, median of the others) in seconds."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return runs[0], statistics.median(runs[1:])


def history(days: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    """One sample a second: a memory-like random walk in whole 4 KiB pages."""
    n = int(days * DAY)
    times = np.round((end - n + np.arange(n, dtype=np.float64)) * 1000) / 1000
    steps = np.random.default_rng(42).integers(-2, 3, n) * 4096
    return times, 3.15e8 + np.cumsum(steps).astype(np.float64)


def bench_ingest(folder: Path, times: np.ndarray, values: np.ndarray) -> SampleStore:
    store = SampleStore(folder / "metrics.db", Retention(raw=(len(times) / DAY + 1) * DAY))
    started = time.perf_counter()
    for lo in range(0, len(times), 3600):  # an hour a batch
        store.append_many(METRIC, {}, times[lo : lo + 3600], values[lo : lo + 3600])
    store.flush()
    elapsed = time.perf_counter() - started
    print(
        f"ingest, batched:            {len(times) / elapsed:>12,.0f} samples/s "
        f"({len(times):,} samples in {elapsed:.2f} s; target >= 200,000)"
    )
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stats = store.stats()
    print(
        f"bytes per raw sample:       {stats.bytes_per_raw_sample:>12.2f} B "
        f"({stats.size_bytes:,} B for {stats.raw_samples:,} samples, with rollups; "
        "target <= 16)"
    )
    noisy = SampleStore(folder / "noisy.db")
    n = min(len(times), DAY)
    cpu = np.random.default_rng(3).gamma(2.0, 1.5, n) * 1.0001  # full-precision floats
    noisy.append_many("opencode_process_cpu_percent", {}, times[:n], cpu)
    noisy.flush()
    noisy.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(
        f"bytes per raw sample, worst case (random full-precision floats): "
        f"{noisy.stats().bytes_per_raw_sample:.2f} B"
    )
    return store


def bench_sampler_path(folder: Path) -> None:
    """40 series a tick (what the sampler writes), flushed every 5 ticks, 2 hours at 1 s."""
    store = SampleStore(folder / "live.db")
    ids = [store.series_id(f"metric_{i}", {"k": str(i % 3)}) for i in range(40)]
    start = time.time() - 7200
    rng = np.random.default_rng(1)
    ticks = [
        [
            (sid, start + tick, float(v))
            for sid, v in zip(ids, rng.integers(0, 1000, 40), strict=True)
        ]
        for tick in range(7200)
    ]
    started = time.perf_counter()
    for tick, rows in enumerate(ticks):
        store.append_rows(rows)
        if tick % 5 == 4:
            store.flush()
    store.flush()
    elapsed = time.perf_counter() - started
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stats = store.stats()
    print(
        f"ingest, sampler-like:       {40 * 7200 / elapsed:>12,.0f} samples/s "
        f"(40 series a tick, flushed every 5 ticks); {stats.bytes_per_raw_sample:.2f} B "
        "per raw sample for these small integer series"
    )


def bench_query(store: SampleStore, start: float, end: float) -> float:
    backend = SQLiteBackend(store, clock=lambda: end)
    query = MetricQuery(METRIC, start=start, end=end, max_points=2000, resolution="raw")
    frame = backend.query(query)
    first, median = timed(lambda: backend.query(query))
    sid = store.series(METRIC)[0].id
    raw_points = len(store.read_raw(sid, start, end)[0])
    print(
        f"query {raw_points:,} raw points -> {len(frame):,}, metrics.db: "
        f"{median * 1000:>8.1f} ms median ({first * 1000:.1f} ms first; target <= 150 ms)"
    )
    return median


def openmetrics(path: Path, times: np.ndarray, values: np.ndarray) -> None:
    with path.open("w") as out:
        out.write(f"# HELP {METRIC} Resident memory.\n# TYPE {METRIC} gauge\n")
        for lo in range(0, len(times), 100_000):
            t, v = times[lo : lo + 100_000], values[lo : lo + 100_000]
            out.write("".join(f"{METRIC} {vv:.0f} {tt:.3f}\n" for tt, vv in zip(t, v, strict=True)))
        out.write("# EOF\n")


def bench_prometheus(folder: Path, times: np.ndarray, values: np.ndarray, sqlite_s: float) -> None:
    source, storage = folder / "backfill.om", folder / "tsdb"
    openmetrics(source, times, values)
    started = time.perf_counter()
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(storage)],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    print(
        f"(promtool backfill of {len(times):,} samples took {time.perf_counter() - started:.1f} s)"
    )
    config = {"global": {"scrape_interval": "1m"}, "scrape_configs": []}
    with running_prometheus(folder / "prom", config, storage=storage, retention="60d") as prom:
        backend = PrometheusBackend(prom.url, timeout=120)
        end, start = float(times[-1]), float(times[0])
        query = MetricQuery(METRIC, start=start, end=end, max_points=2000)
        frame = backend.query(query)
        assert len(frame) > 0, "Prometheus returned nothing: the backfill is not loaded"
        first, median = timed(lambda: backend.query(query), repeat=5)
        print(
            f"same query, Prometheus:     {median * 1000:>8.1f} ms median "
            f"({first * 1000:.1f} ms first; {len(frame):,} points)"
        )
        print(
            f"ratio metrics.db / Prometheus: {sqlite_s / median:.2f} (below 1: metrics.db faster)"
        )
        step = (end - start) / 1000
        window = f"[{round(step * 1000)}ms]"

        def min_and_max() -> None:
            for fn in ("min_over_time", "max_over_time"):
                backend._range(f"{fn}({METRIC}{window})", start + step, end, step)

        _, bare = timed(min_and_max, repeat=5)
        print(
            f"Prometheus, only its min_over_time and max_over_time range queries: "
            f"{bare * 1000:.1f} ms; ratio metrics.db / that: {sqlite_s / bare:.2f}"
        )


def bench_figures(times: np.ndarray, values: np.ndarray) -> None:
    idx = np.linspace(0, len(times) - 1, 2000).astype(int)
    frame = concat_frames(
        [
            tidy_frame("opencode_connections", f"state={s}", times[idx], values[idx] + i)
            for i, s in enumerate(("A", "B", "C"))
        ]
    )
    import plotly.graph_objects as go

    widget = go.FigureWidget(figures.timeseries_figure(figures.PANELS["connections"], tz="UTC"))
    figures.update_timeseries(widget, frame)
    _, median = timed(lambda: figures.update_timeseries(widget, frame))
    stat = go.FigureWidget(figures.stat_figure(figures.STATS["memory"]))
    _, stat_median = timed(lambda: figures.update_stat(stat, frame, figures.STATS["memory"]))
    print(
        f"figure refresh (FigureWidget, 3 x 2,000 points): {median * 1000:.1f} ms; "
        f"stat panel: {stat_median * 1000:.1f} ms (target well under 100 ms)"
    )


def agent_cpu(interval: str, seconds: float, folder: Path) -> float:
    """Percent of one core the agent uses over ``seconds`` with its server running."""
    import psutil
    from conftest import kill_everything_of, private_env, start_agent

    from nexus_ops.opencode import native_binary_in

    prefix = Path(os.environ.get("NXOPS_TEST_OPENCODE_PREFIX", ROOT / ".cache" / "opencode"))
    binary = native_binary_in(prefix / "node_modules")
    if binary is None:
        raise SystemExit(f"no OpenCode binary under {prefix}: run `make opencode`")
    env = private_env(
        folder, {"NEXUS_OPENCODE_BIN": str(binary), "NEXUS_METRICS_INTERVAL": interval}
    )
    agent = start_agent(env)
    try:
        agent.client.start(wait=True)
        time.sleep(3)  # let start-up work settle
        proc = psutil.Process(agent.proc.pid)
        before, began = proc.cpu_times(), time.monotonic()
        time.sleep(seconds)
        after, ended = proc.cpu_times(), time.monotonic()
        used = (after.user + after.system) - (before.user + before.system)
        return 100 * used / (ended - began)
    finally:
        agent.client.stop()
        agent.stop()
        kill_everything_of(env)


def bench_sampler_cpu(folder: Path, seconds: float) -> None:
    every_second = agent_cpu("1", seconds, folder / "fast")
    hourly = agent_cpu("3600", seconds, folder / "slow")
    print(
        f"agent CPU, sampling every 1 s: {every_second:.2f} % of one core; sampling hourly: "
        f"{hourly:.2f} %; the sampler's share: {every_second - hourly:.2f} % (target < 1 %)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 day of history, 10 s of CPU")
    parser.add_argument("--no-prometheus", action="store_true")
    parser.add_argument("--no-agent", action="store_true", help="skip the sampler CPU run")
    args = parser.parse_args()
    days, cpu_seconds = (1.0, 10.0) if args.quick else (7.0, 60.0)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        folder = Path(tmp)
        end = float(np.floor(time.time()))
        times, values = history(days, end)
        store = bench_ingest(folder, times, values)
        bench_sampler_path(folder)
        sqlite_s = bench_query(store, float(times[0]), end)
        if not args.no_prometheus:
            bench_prometheus(folder, times, values, sqlite_s)
        bench_figures(times, values)
        if not args.no_agent:
            bench_sampler_cpu(folder, cpu_seconds)


if __name__ == "__main__":
    main()
