"""Looking at a process tree and its sockets: real processes, real sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from conftest import free_port, wait_for

from nexus_ops.metrics.proctree import Rate, TreeMeter
from nexus_ops.process import connections_on, identify, tree_pids, tree_usage


@pytest.fixture
def family() -> Iterator[subprocess.Popen[bytes]]:
    """A shell with two children (one with a child of its own), in its own group."""
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 60 & sh -c 'sleep 60 & wait' & wait"], start_new_session=True
    )
    try:
        wait_for(lambda: len(psutil.Process(proc.pid).children(recursive=True)) == 3, timeout=10)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_tree_is_found_without_the_host_process_list(family: subprocess.Popen[bytes]) -> None:
    expected = {p.pid for p in psutil.Process(family.pid).children(recursive=True)}
    pids = tree_pids(family.pid)
    assert pids[0] == family.pid and set(pids[1:]) == expected


def test_tree_usage_adds_up_what_psutil_reports(family: subprocess.Popen[bytes]) -> None:
    record = identify(family.pid)
    usage = tree_usage(record, port=None)
    assert usage is not None and usage.children == 3
    members = [psutil.Process(pid) for pid in tree_pids(family.pid)]
    assert usage.rss_bytes == sum(p.memory_info().rss for p in members)
    assert usage.threads == sum(p.num_threads() for p in members)
    assert usage.open_fds == sum(p.num_fds() for p in members)
    os.killpg(family.pid, signal.SIGKILL)
    family.wait()
    assert tree_usage(record, port=None) is None
    assert TreeMeter().sample(record, port=None) is None


def test_cpu_counter_only_grows_and_rate_is_percent_of_a_core() -> None:
    # The interpreter itself, not a "python3" on PATH that may be a shim which execs it.
    spin = [sys.executable, "-c", "while True: pass"]
    busy = subprocess.Popen(spin, start_new_session=True)
    try:
        record = identify(busy.pid)
        meter = TreeMeter()
        first = meter.sample(record, port=None)
        time.sleep(1.0)
        second = meter.sample(record, port=None)
        assert first is not None and second is not None
        assert second.cpu_seconds_total > first.cpu_seconds_total
        assert 30 < second.cpu_percent <= 110  # one spinning thread: about one core
    finally:
        os.killpg(busy.pid, signal.SIGKILL)
        busy.wait()
    ticks = iter([0.0, 2.0])
    rate = Rate(clock=lambda: next(ticks))
    assert rate(10.0) == 0.0 and rate(11.0) == 50.0


def test_connections_by_state_show_the_close_wait_pile_up() -> None:
    port = free_port()
    server = socket.create_server(("127.0.0.1", port))
    clients, accepted = [], []
    try:
        for _ in range(3):
            clients.append(socket.create_connection(("127.0.0.1", port)))
            accepted.append(server.accept()[0])
        # Two clients hang up; the server never closes its end: CLOSE_WAIT, the hang signature.
        clients[0].close()
        clients[1].close()
        me = psutil.Process()
        states = wait_for(
            lambda: (c := connections_on(me, port))["CLOSE_WAIT"] == 2 and c,
            timeout=5,
            what="two sockets in CLOSE_WAIT",
        )
        assert states["LISTEN"] == 1 and states["ESTABLISHED"] == 1  # type: ignore[index]
        by_psutil: dict[str, int] = {}
        for conn in me.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port:
                by_psutil[conn.status] = by_psutil.get(conn.status, 0) + 1
        assert {k: v for k, v in states.items() if v} == by_psutil  # type: ignore[union-attr]
    finally:
        for sock in [server, *clients, *accepted]:
            sock.close()
