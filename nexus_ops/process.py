"""Processes: spawn, identify, signal and inspect a process tree (psutil, subprocess).

A process is known by a :class:`~nexus_ops.models.ProcessRecord` (pid, create
time, process group), so that a pid the kernel has given to another program since
is never signalled. All three survive exec, so a wrapper script that ends in
``exec /real/opencode "$@"`` is still the process that was started; the command line is not
compared, since exec changes it.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import psutil

from nexus_ops.errors import PortInUse, ProcessError
from nexus_ops.models import ProcessRecord
from nexus_ops.paths import atomic_write

# create_time is rounded by the kernel's clock ticks; two reads may differ a hair.
_CREATE_TIME_SLACK = 0.05
# How long a process that is still inside exec may show an empty command line.
_EXEC_SETTLE = 1.0


@dataclass
class Spawned:
    """A process this agent started: its record and its Popen (to reap it)."""

    record: ProcessRecord
    popen: subprocess.Popen[bytes]


def spawn(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path, umask: int = -1
) -> Spawned:
    """Start ``argv`` in its own session and process group, output appended to ``log_path``.

    The log is opened with O_APPEND, so that the process keeps writing safely when
    the agent dies and while the agent rotates the file (copy, then truncate).
    ``umask``, when not negative, is the process's umask (the agent's own otherwise).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            popen = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                umask=umask,
            )
        except OSError as exc:
            raise ProcessError(
                f"could not start {argv[0]}: {exc.strerror}",
                hint="check that the binary exists and is executable",
            ) from exc
    try:
        record = identify(popen.pid, fallback_cmdline=list(argv))
    except ProcessError:  # it exited at once: still ours to reap and report
        record = ProcessRecord(
            pid=popen.pid, create_time=time.time(), cmdline=list(argv), pgid=popen.pid
        )
    return Spawned(record=record, popen=popen)


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def identify(pid: int, fallback_cmdline: list[str] | None = None) -> ProcessRecord:
    """The record of a running process.

    A process caught in the middle of exec (Popen has returned, the kernel has not
    yet laid out the new program's arguments) shows an empty command line for a
    moment; it is read again until it shows, or ``fallback_cmdline`` is used.
    """
    deadline = time.monotonic() + _EXEC_SETTLE
    try:
        proc = psutil.Process(pid)
        while True:
            with proc.oneshot():
                create_time = proc.create_time()
                cmdline = proc.cmdline()
            if cmdline or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        pgid = os.getpgid(pid)
    except (psutil.Error, ProcessLookupError) as exc:
        raise ProcessError(f"process {pid} vanished before it could be identified") from exc
    return ProcessRecord(
        pid=pid, create_time=create_time, cmdline=cmdline or fallback_cmdline or [], pgid=pgid
    )


def find_live(record: ProcessRecord) -> psutil.Process | None:
    """The process of ``record`` if it still runs and is the same process; else None.

    The same process: same pid, same create time and still in the recorded process
    group. A record without a group (written by an older version) is checked
    against its command line instead.
    """
    try:
        proc = psutil.Process(record.pid)
        with proc.oneshot():
            same_start = abs(proc.create_time() - record.create_time) < _CREATE_TIME_SLACK
            zombie = proc.status() == psutil.STATUS_ZOMBIE
            same = (
                os.getpgid(record.pid) == record.pgid
                if record.pgid is not None
                else proc.cmdline() == record.cmdline
            )
    except (psutil.Error, ProcessLookupError):
        return None
    return proc if same_start and same and not zombie else None


def server_problem(record: ProcessRecord, binary: Path | None) -> str | None:
    """Why ``record`` is not an ``opencode serve`` that this agent started; None when it is.

    It must be the recorded process (pid, create time, group), lead the process
    group the agent made for it, not be in the agent's own group, and run
    ``serve`` from an OpenCode binary: the configured ``binary``, or one named
    ``opencode*`` (what a wrapper script execs). Whether it listens on its port is
    :func:`listens_on`.
    """
    proc = find_live(record)
    if proc is None:
        return f"pid {record.pid} is gone or is another process"
    try:
        exe, cmdline, pgid = Path(proc.exe()), proc.cmdline(), os.getpgid(record.pid)
    except (psutil.Error, ProcessLookupError):
        return f"pid {record.pid} cannot be inspected"
    if pgid != record.pid or record.pgid not in (None, record.pid) or pgid == os.getpgrp():
        return f"pid {record.pid} does not lead a process group of its own (group {pgid})"
    if not _is_opencode(exe, binary) or "serve" not in cmdline[1:]:
        return f"pid {record.pid} runs {exe}, not `opencode serve`"
    return None


def _is_opencode(exe: Path, binary: Path | None) -> bool:
    with contextlib.suppress(OSError):
        if binary is not None and exe.resolve() == binary.resolve():
            return True
    return exe.name.startswith("opencode")


def orphaned_server(port: int, binary: Path | None, password: str) -> ProcessRecord | None:
    """The record of an ``opencode serve --port port`` that has no pidfile; None when none.

    An agent killed between starting the server and writing its pidfile leaves it
    running unrecorded, listening or about to. It is this install's server when it
    passes :func:`server_problem` and its environment holds this install's server
    password, which only this user and the agent know.
    """
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if "serve" not in argv or not _serves_port(argv, port):
            continue
        try:
            record = identify(proc.pid)
            held = proc.environ().get("OPENCODE_SERVER_PASSWORD", "")
        except (ProcessError, psutil.Error):
            continue
        if server_problem(record, binary) is None and hmac.compare_digest(
            held.encode(), password.encode()
        ):
            return record
    return None


def _serves_port(argv: list[str], port: int) -> bool:
    return any(a == "--port" and b == str(port) for a, b in itertools.pairwise(argv))


def listens_on(record: ProcessRecord, port: int) -> bool:
    """True when ``record``'s process, or one of its descendants, listens on TCP ``port``."""
    return any(listen_addresses(pid, port) for pid in tree_pids(record.pid))


def save_record(path: Path, record: ProcessRecord) -> None:
    atomic_write(path, record.model_dump_json().encode(), mode=0o600)


def load_record(path: Path) -> ProcessRecord | None:
    """The record in a pidfile; None when there is none or it is unreadable."""
    try:
        return ProcessRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def remove_record(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def descendants(proc: psutil.Process) -> list[psutil.Process]:
    """The live descendants of ``proc`` (found without scanning the host's process list)."""
    found = []
    for pid in tree_pids(proc.pid)[1:]:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to process group ``pgid``; False when the group is refused or gone.

    Refused: 0 and 1 (``killpg`` reads 0 as the caller's own group, and a
    container's init shows group 0) and the agent's own group. Every group signal
    goes through here.
    """
    if pgid <= 1 or pgid == os.getpgrp():
        return False
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_members(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of group ``pgid``: one scan of the host's processes."""
    found = []
    for pid in psutil.pids():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(psutil.Process(pid))
    return found


def own_group(record: ProcessRecord) -> int | None:
    """The process group ``record``'s process was started in and leads, when it is still ours.

    While any member is left, the kernel does not give the group's id to a new
    process; once none is, a new process with that pid may lead a group of the
    same id, and that group is not ours.
    """
    if record.pgid != record.pid:
        return None
    leader = [p for p in group_members(record.pid) if p.pid == record.pid]
    if leader and find_live(record) is None:
        return None
    return record.pid


def terminate_tree(record: ProcessRecord, grace: float) -> list[int]:
    """Stop a process, everything it started and what is left of its group; return survivors.

    SIGTERM (and SIGCONT, so that a stopped process can act on it) to the group it
    leads and to any descendant that left the group, up to ``grace`` seconds to
    exit, then SIGKILL. When the process has exited already, the rest of its group
    is stopped the same way (a binary that forks children and exits leaves them
    in its group).
    """
    proc = find_live(record)
    group = own_group(record)
    tree = [proc, *descendants(proc)] if proc is not None else []
    members = _unique([*tree, *(group_members(group) if group is not None else [])])
    if not members:
        return []
    _signal_all(members, group, signal.SIGTERM)
    _signal_all(members, group, signal.SIGCONT)
    alive = _wait_gone(members, grace)
    if alive:
        _signal_all(alive, group, signal.SIGKILL)
        alive = _wait_gone(alive, 2.0)
    return [p.pid for p in alive]


def _unique(procs: list[psutil.Process]) -> list[psutil.Process]:
    return list({p.pid: p for p in procs}.values())


def _signal_all(procs: list[psutil.Process], group: int | None, sig: signal.Signals) -> None:
    """``sig`` to ``group``, and to each of ``procs`` that is not in it."""
    grouped = group is not None and signal_group(group, sig)
    for proc in procs:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if not grouped or os.getpgid(proc.pid) != group:
                proc.send_signal(sig)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` for ``procs`` to exit; those still running.

    A zombie counts as gone, and is not reaped here: the agent's own child is
    reaped by its Popen, which thus learns its exit status.
    """
    deadline = time.monotonic() + timeout
    alive = procs
    while True:
        alive = [p for p in alive if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def terminate_process(record: ProcessRecord, grace: float) -> list[int]:
    """SIGTERM one process (not its children), SIGKILL after ``grace``; survivors' pids."""
    proc = find_live(record)
    if proc is None:
        return []
    with contextlib.suppress(psutil.Error):
        proc.terminate()
    alive = _wait_gone([proc], grace)
    for leftover in alive:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    return [p.pid for p in _wait_gone(alive, 2.0)]


def pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when ``pid`` exits (Linux), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def wait_status(
    popen: subprocess.Popen[bytes] | None, timeout: float = 1.0
) -> tuple[int | None, int | None]:
    """(exit code, signal) of a reaped child; (None, None) when it is not ours or still runs.

    The wait is bounded: a caller that holds a lock must never hang on a process
    that was thought to have exited.
    """
    if popen is None:
        return None, None
    try:
        code = popen.wait(timeout)
    except subprocess.TimeoutExpired:
        return None, None
    return (None, -code) if code < 0 else (code, None)


def check_port_free(host: str, port: int, setting: str = "NEXUS_OPENCODE_PORT") -> None:
    """Raise PortInUse, naming the holder where the system shows it, if the port is taken.

    ``setting`` is the variable that chooses this port, named in the hint.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PortInUse(f"cannot bind {host}:{port}: {exc.strerror}") from exc
    holder = port_holder(port)
    who = f" by {holder}" if holder else " by a process this user cannot see"
    raise PortInUse(
        f"port {port} on {host} is already in use{who}",
        hint=f"stop that process, or choose another port with {setting} (now {port})",
    )


def port_holder(port: int) -> str | None:
    """'name (pid N): cmdline' of the process listening on ``port``, when visible."""
    pid = port_listener(port)
    return describe_pid(pid) if pid else None


def listen_addresses(pid: int, port: int, proc_root: Path = Path("/proc")) -> list[str]:
    """Addresses on which process ``pid`` listens on TCP ``port`` (empty: none, or not visible).

    Linux: the process's socket inodes matched against a sock_diag dump of the
    listening sockets, a fraction of a millisecond; psutil, which reads the whole
    /proc/net/tcp tables, takes several. Elsewhere: psutil.
    """
    with contextlib.suppress(OSError, ValueError):
        return _proc_listen_addresses(proc_root / str(pid), port)
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return []
    return [
        conn.laddr.ip
        for conn in conns
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
    ]


def _proc_listen_addresses(proc: Path, port: int) -> list[str]:
    inodes = set()
    for fd in os.scandir(proc / "fd"):
        with contextlib.suppress(OSError):
            link = str(Path(fd.path).readlink())
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return [
        sock.address
        for family in (socket.AF_INET, socket.AF_INET6)
        for sock in _sock_diag_dump(family, states=1 << _TCP_LISTEN)
        if sock.port == port and sock.inode in inodes
    ]


def accepts_connections(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts a TCP connection on ``host:port`` (nothing is sent)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def describe_pid(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"{proc.name()} (pid {pid}): {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {pid}"


def tree_rss(record: ProcessRecord) -> int | None:
    """Resident memory of a process and its descendants, in bytes; None if gone."""
    proc = find_live(record)
    if proc is None:
        return None
    total = 0
    for member in [proc, *descendants(proc)]:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def self_usage() -> tuple[float, int]:
    """(CPU seconds, resident bytes) of this process."""
    proc = psutil.Process()
    with proc.oneshot():
        cpu = proc.cpu_times()
        return cpu.user + cpu.system, proc.memory_info().rss


def uptime(record: ProcessRecord) -> float:
    return max(0.0, time.time() - record.create_time)


# Connection states always counted (0 when absent), so their series exist from the start.
CONNECTION_STATES = ("ESTABLISHED", "CLOSE_WAIT", "LISTEN", "FIN_WAIT1", "FIN_WAIT2", "LAST_ACK")


@dataclass(frozen=True)
class TreeUsage:
    """One look at a process tree: CPU seconds per member and the tree's totals."""

    pid: int
    cpu_seconds: dict[int, float]
    rss_bytes: int
    threads: int
    open_fds: int
    children: int
    connections: dict[str, int]


def child_pids(pid: int, proc_root: Path = Path("/proc")) -> list[int] | None:
    """Direct children of ``pid`` from /proc (None where the kernel does not say)."""
    found: list[int] = []
    try:
        for task in (proc_root / str(pid) / "task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                found.extend(int(p) for p in (task / "children").read_text().split())
    except FileNotFoundError:
        return [] if not (proc_root / str(pid)).exists() else None
    except (NotADirectoryError, PermissionError):
        return None
    return found


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants, found through /proc/<pid>/task/*/children.

    Unlike psutil's ``children()``, this never reads the whole host's process
    list; psutil is the fallback where the kernel has no ``children`` files.
    """
    order, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        order.append(current)
        kids = child_pids(current)
        if kids is None:
            with contextlib.suppress(psutil.Error):
                order.extend(p.pid for p in psutil.Process(current).children(recursive=True))
            continue
        queue.extend(k for k in kids if k not in order)
    return order


def tree_usage(record: ProcessRecord, port: int | None) -> TreeUsage | None:
    """CPU, memory, threads, fds and children of a process tree, and its sockets on ``port``.

    None when the process of ``record`` is gone (or its pid now belongs to another).
    """
    root = find_live(record)
    if root is None:
        return None
    members = [root]
    for pid in tree_pids(record.pid)[1:]:
        with contextlib.suppress(psutil.Error):
            members.append(psutil.Process(pid))
    cpu: dict[int, float] = {}
    rss = threads = fds = 0
    for proc in members:
        with contextlib.suppress(psutil.Error), proc.oneshot():
            times = proc.cpu_times()
            cpu[proc.pid] = times.user + times.system
            rss += proc.memory_info().rss
            threads += proc.num_threads()
            fds += proc.num_fds()
    conns = connections_on(root, port) if port else {}
    return TreeUsage(record.pid, cpu, rss, threads, fds, len(members) - 1, conns)


def connections_on(proc: psutil.Process, port: int) -> dict[str, int]:
    """TCP sockets on the server's ``port`` (its own end), counted by state.

    Linux: one sock_diag netlink dump of the network namespace's TCP sockets
    (what ``ss`` does): about 1 ms, where psutil, which maps every socket to its
    process through /proc, takes several. Elsewhere: psutil.
    """
    try:
        return sock_diag_states(port)
    except OSError:
        pass
    counts = dict.fromkeys(CONNECTION_STATES, 0)
    with contextlib.suppress(psutil.Error):
        for conn in proc.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port:
                counts[conn.status] = counts.get(conn.status, 0) + 1
    return counts


# TCP states in the kernel's numbering (include/net/tcp_states.h).
_TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
    11: "CLOSING", 12: "SYN_RECV",
}  # fmt: skip
_TCP_LISTEN = 10
_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _NLMSG_ERROR, _NLMSG_DONE = 4, 20, 2, 3
_NLM_F_REQUEST_DUMP = 0x301


def sock_diag_states(port: int) -> dict[str, int]:
    """Counts by state of the TCP sockets whose local port is ``port`` (IPv4 and IPv6)."""
    counts = dict.fromkeys(CONNECTION_STATES, 0)
    for family in (socket.AF_INET, socket.AF_INET6):
        for sock in _sock_diag_dump(family):
            if sock.port == port:
                name = _TCP_STATES.get(sock.state, str(sock.state))
                counts[name] = counts.get(name, 0) + 1
    return counts


class DiagSocket(NamedTuple):
    """One TCP socket of a sock_diag dump: state, local port and address, inode."""

    state: int
    port: int
    address: str
    inode: int


def _sock_diag_dump(family: int, states: int = 0xFFFFFFFF) -> list[DiagSocket]:
    """Every TCP socket of ``family`` in one of ``states`` (a bit mask): an inet_diag dump."""
    # struct inet_diag_req_v2: family, protocol, ext, pad, states, then a zero sockid.
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, states) + bytes(48)
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP,
                         1, 0)  # fmt: skip
    found: list[DiagSocket] = []
    size = 4 if family == socket.AF_INET else 16
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(2.0)
        sock.sendto(header + request, (0, 0))
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset < len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR or length < 16:
                    raise OSError("sock_diag refused the dump")
                # struct inet_diag_msg: family, state, timer, retrans, then the sockid
                # (sport, dport big-endian; src, dst 16 bytes each; ...), the inode at 84.
                source = data[offset + 24 : offset + 24 + size]
                found.append(
                    DiagSocket(
                        state=data[offset + 17],
                        port=struct.unpack_from("!H", data, offset + 20)[0],
                        address=socket.inet_ntop(family, source),
                        inode=struct.unpack_from("=I", data, offset + 84)[0],
                    )
                )
                offset += (length + 3) & ~3


# ---- used by the recovery runbooks (nexus_ops.recovery) ---------------------------------


def port_listener(port: int) -> int | None:
    """Pid of the process listening on TCP ``port`` (None: nobody, or not visible)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


def is_ancestor(ancestor: int, pid: int) -> bool:
    """True when ``pid`` is ``ancestor`` or one of its descendants."""
    with contextlib.suppress(psutil.Error):
        proc: psutil.Process | None = psutil.Process(pid)
        while proc is not None:
            if proc.pid == ancestor:
                return True
            proc = proc.parent()
    return False


def fd_usage(pid: int) -> tuple[int, int] | None:
    """(open file descriptors, soft limit) of a process; None if not visible."""
    try:
        proc = psutil.Process(pid)
        soft, _ = proc.rlimit(psutil.RLIMIT_NOFILE)
        return proc.num_fds(), int(soft)
    except (psutil.Error, AttributeError):
        return None


def memory_available() -> tuple[int, int]:
    """(available, total) bytes of memory on this host."""
    memory = psutil.virtual_memory()
    return int(memory.available), int(memory.total)


def host_addresses() -> list[str]:
    """This host's IPv4 and IPv6 addresses, loopback and link-local ones left out."""
    found = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = entry.address.split("%", 1)[0]
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(address)
                if not (ip.is_loopback or ip.is_link_local):
                    found.append(str(ip))
    return found
