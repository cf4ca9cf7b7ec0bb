"""Process identity, tree termination and port checks on real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import free_port, wait_for

from nexus_ops.errors import BinaryNotFound, PortInUse
from nexus_ops.models import ProcessRecord
from nexus_ops.opencode import locate_binary
from nexus_ops.process import (
    check_port_free,
    find_live,
    group_members,
    identify,
    listen_addresses,
    listens_on,
    load_record,
    save_record,
    server_problem,
    spawn,
    terminate_tree,
    wait_status,
)
from nexus_ops.supervisor import backoff_delay

FORKER = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a stubborn parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
escapee = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                           start_new_session=True)   # leaves the process group
print(child.pid, escapee.pid, flush=True)
time.sleep(300)
"""


def test_identity_refuses_a_reused_pid(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        record = identify(proc.pid)
        assert find_live(record) is not None
        reused = record.model_copy(update={"create_time": record.create_time - 100})
        assert find_live(reused) is None
        other_group = record.model_copy(update={"pgid": record.pid})
        assert record.pgid == os.getpgrp() != record.pid
        assert find_live(other_group) is None
        legacy = record.model_copy(update={"pgid": None, "cmdline": ["opencode", "serve"]})
        assert find_live(legacy) is None  # an old record without a group: by command line
        assert find_live(legacy.model_copy(update={"cmdline": record.cmdline})) is not None
        save_record(tmp_path / "x.pid", record)
        assert load_record(tmp_path / "x.pid") == record
        assert oct((tmp_path / "x.pid").stat().st_mode & 0o777) == "0o600"
    finally:
        proc.kill()
        proc.wait()


def test_identity_survives_exec_and_the_wait_never_hangs(tmp_path: Path) -> None:
    spawned = spawn(["/bin/sh", "-c", "sleep 0.2; exec sleep 30"], dict(os.environ), tmp_path,
                    tmp_path / "out.log")  # fmt: skip
    try:
        assert spawned.record.pgid == spawned.record.pid
        wait_for(lambda: psutil.Process(spawned.record.pid).cmdline() == ["sleep", "30"], 10)
        assert find_live(spawned.record) is not None
        assert wait_status(spawned.popen, timeout=0.1) == (None, None)  # alive: no hang
    finally:
        spawned.popen.kill()
    assert wait_status(spawned.popen) == (None, 9)


def test_garbage_pidfile_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / "bad.pid").write_text("{not json")
    assert load_record(tmp_path / "bad.pid") is None
    assert load_record(tmp_path / "missing.pid") is None


def test_terminate_tree_kills_stubborn_parent_and_escaped_children(tmp_path: Path) -> None:
    script = tmp_path / "forker.py"
    script.write_text(FORKER)
    spawned = spawn([sys.executable, str(script)], dict(os.environ), tmp_path, tmp_path / "out.log")
    deadline = time.monotonic() + 10
    while not (tmp_path / "out.log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    child, escapee = map(int, (tmp_path / "out.log").read_text().split())
    assert os.getpgid(spawned.record.pid) == spawned.record.pid  # own group
    survivors = terminate_tree(spawned.record, grace=0.5)
    spawned.popen.wait(timeout=5)
    assert survivors == []
    for pid in (child, escapee):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_what_an_exited_leader_left_in_its_group_is_stopped(tmp_path: Path) -> None:
    script = "sleep 300 & echo $!; trap '' TERM; sh -c 'trap \"\" TERM; sleep 300' & exit 0"
    spawned = spawn(["/bin/sh", "-c", script], dict(os.environ), tmp_path, tmp_path / "out.log")
    assert spawned.popen.wait(timeout=10) == 0
    child = int((tmp_path / "out.log").read_text().split()[0])
    left = wait_for(lambda: len(group_members(spawned.record.pid)) == 3 and group_members(
        spawned.record.pid), 10, what="the sleep, the stubborn shell and its sleep")  # fmt: skip
    assert child in [p.pid for p in left]  # type: ignore[attr-defined]
    assert terminate_tree(spawned.record, grace=0.3) == []
    assert group_members(spawned.record.pid) == []


def test_group_signals_refuse_0_1_and_the_callers_own_group(tmp_path: Path) -> None:
    code = (
        "import os, signal\n"
        "from nexus_ops.process import signal_group\n"
        "os.setsid()\n"
        "print([signal_group(g, signal.SIGTERM) for g in (0, 1, os.getpgrp())])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip
    assert done.returncode == 0, f"the caller signalled itself ({done.returncode}): {done.stderr}"
    assert done.stdout.strip() == "[False, False, False]"


def test_only_an_opencode_server_leading_its_own_group_is_a_server(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record = identify(bystander.pid)
        assert record.pgid == bystander.pid
        assert "not `opencode serve`" in (server_problem(record, None) or "")
        assert "not `opencode serve`" in (server_problem(record, Path("/usr/bin/opencode")) or "")
        assert not listens_on(record, free_port())
    finally:
        bystander.kill()
        bystander.wait()
    in_my_group = subprocess.Popen(["sleep", "300"])
    try:
        problem = server_problem(identify(in_my_group.pid), None) or ""
        assert "does not lead a process group" in problem
    finally:
        in_my_group.kill()
        in_my_group.wait()
    init = identify(1)
    assert server_problem(init, None) is not None


def test_terminate_of_a_gone_process_is_a_no_op() -> None:
    record = ProcessRecord(pid=2**22 - 1, create_time=1.0, cmdline=["gone"])
    assert terminate_tree(record, grace=0.1) == []


def test_port_in_use_names_the_holder() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUse) as caught:
            check_port_free("127.0.0.1", port)
    assert f"pid {os.getpid()}" in str(caught.value)
    assert "NEXUS_OPENCODE_PORT" in str(caught.value)


def test_listen_addresses_are_those_of_the_process_own_listening_sockets() -> None:
    with socket.socket() as four, socket.socket(socket.AF_INET6) as six, socket.socket() as peer:
        four.bind(("127.0.0.1", 0))
        four.listen()
        port = four.getsockname()[1]
        six.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        six.bind(("::1", port))
        six.listen()
        peer.connect(("127.0.0.1", port))  # a connected socket on the port is no listener
        assert sorted(listen_addresses(os.getpid(), port)) == ["127.0.0.1", "::1"]
        assert listen_addresses(os.getppid(), port) == []
    assert listen_addresses(os.getpid(), port) == []


def test_missing_binary_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BinaryNotFound) as caught:
        locate_binary(None, tmp_path / "prefix")
    assert "nexus-ops opencode install" in str(caught.value)
    with pytest.raises(BinaryNotFound) as configured:
        locate_binary(tmp_path / "nope", tmp_path)
    assert "NEXUS_OPENCODE_BIN" in str(configured.value)


def test_npm_wrapper_script_is_resolved_to_the_native_binary(
    opencode_bin: Path, tmp_path: Path
) -> None:
    node_modules = tmp_path / "node_modules"
    wrapper = node_modules / "opencode-ai" / "bin" / "opencode"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text("#!/usr/bin/env node\nrequire('child_process')\n")
    with pytest.raises(BinaryNotFound, match="wrapper"):
        locate_binary(wrapper, tmp_path)
    native = node_modules / "opencode-linux-x64" / "bin" / "opencode"
    native.parent.mkdir(parents=True)
    native.symlink_to(opencode_bin)
    assert locate_binary(wrapper, tmp_path) == native
    own_script = tmp_path / "my-opencode.sh"
    own_script.write_text('#!/bin/sh\nexec opencode "$@"\n')
    assert locate_binary(own_script, tmp_path) == own_script


def test_backoff_is_exponential_capped_and_jittered() -> None:
    delays = [backoff_delay(n, initial=0.25, cap=4.0, jitter=1.0) for n in range(1, 8)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff_delay(3, initial=0.25, cap=4.0, jitter=0.0) == 0.5
