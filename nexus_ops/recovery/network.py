"""Network failure: who holds the server's port, does loopback answer, does DNS resolve,
are the outside services reachable; the repair: free the port and start the server.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time
from urllib.parse import urlsplit

import httpx

from nexus_ops.errors import NexusOpsError
from nexus_ops.process import (
    accepts_connections,
    describe_pid,
    identify,
    is_ancestor,
    load_record,
    port_listener,
    terminate_tree,
)
from nexus_ops.recovery.context import RecoveryContext
from nexus_ops.recovery.results import Check, Step


def _ours(ctx: RecoveryContext, pid: int) -> bool:
    record = load_record(ctx.layout.server_pidfile)
    if record is not None and is_ancestor(record.pid, pid):
        return True
    if ctx.client is not None:
        try:
            status = ctx.client.status()
        except NexusOpsError:
            return False
        return status.pid is not None and is_ancestor(status.pid, pid)
    return False


def port_binding(ctx: RecoveryContext) -> Check:
    """Is the server's port bound, and by the managed server or by another process?"""
    port = ctx.settings.opencode_port
    pid = port_listener(port)
    if pid is None:
        bound = accepts_connections("127.0.0.1", port)
        summary = (
            f"port {port} is bound by a process this user cannot see"
            if bound
            else f"nothing listens on port {port}"
        )
        return Check(name="port", ok=False, summary=summary, details={"port": port})
    holder = describe_pid(pid)
    ours = _ours(ctx, pid)
    summary = (
        f"port {port} is held by the managed server: {holder}"
        if ours
        else f"port {port} is held by another process: {holder}"
    )
    return Check(
        name="port",
        ok=ours,
        summary=summary,
        details={"port": port, "pid": pid, "holder": holder, "managed": ours},
    )


def loopback(ctx: RecoveryContext) -> Check:
    """Does the server answer ``GET /global/health`` on loopback, and how fast?"""
    started = time.perf_counter()
    try:
        client = ctx.opencode(timeout=2.0)
        try:
            health = client.health()
        finally:
            client.close()
    except NexusOpsError as exc:
        return Check(name="loopback", ok=False, summary=exc.message)
    seconds = time.perf_counter() - started
    return Check(
        name="loopback",
        ok=True,
        summary=f"healthy, v{health.version}, answered in {seconds * 1000:.0f} ms",
        details={"url": ctx.settings.opencode_base_url},
    )


def external_urls(ctx: RecoveryContext, urls: list[str] | None = None) -> list[str]:
    """The outside services to check: ``urls``, else NEXUS_EXTERNAL_URLS."""
    if urls:
        return urls
    return [u.strip() for u in ctx.settings.external_urls.split(",") if u.strip()]


def dns(ctx: RecoveryContext, urls: list[str] | None = None, timeout: float = 3.0) -> Check:
    """Do the outside services' host names resolve (each within ``timeout`` s)?"""
    hosts = sorted({urlsplit(u).hostname or "" for u in external_urls(ctx, urls)} - {""})
    results: dict[str, object] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(len(hosts), 1))
    futures = {host: pool.submit(socket.getaddrinfo, host, 443) for host in hosts}
    for host, future in futures.items():
        try:
            infos = future.result(timeout=timeout)
            results[host] = ", ".join(sorted({str(info[4][0]) for info in infos})[:3])
        except concurrent.futures.TimeoutError:
            results[host] = f"no answer within {timeout:g} s"
        except OSError as exc:
            results[host] = f"fails: {exc}"
    pool.shutdown(wait=False)
    failed = [h for h, r in results.items() if str(r).startswith(("fails", "no answer"))]
    summary = (
        f"{len(failed)} of {len(hosts)} names do not resolve: {', '.join(failed)}"
        if failed
        else f"{len(hosts)} names resolve"
    )
    return Check(name="dns", ok=not failed, severity="warning", summary=summary, details=results)


def outbound(ctx: RecoveryContext, urls: list[str] | None = None, timeout: float = 5.0) -> Check:
    """Do the outside services answer (any HTTP status counts as reachable)?"""
    results: dict[str, object] = {}
    for url in external_urls(ctx, urls):
        try:
            response = httpx.head(url, timeout=timeout, follow_redirects=False)
            results[url] = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            results[url] = f"unreachable ({type(exc).__name__})"
    failed = [u for u, r in results.items() if str(r).startswith("unreachable")]
    summary = (
        f"{len(failed)} of {len(results)} services unreachable"
        if failed
        else f"{len(results)} services reachable"
    )
    return Check(
        name="outbound", ok=not failed, severity="warning", summary=summary, details=results
    )


def free_port(
    ctx: RecoveryContext, port_check: Check, *, dry_run: bool, stop_holder: bool = False
) -> Step:
    """Free the port from another holder (only an OpenCode server, unless ``stop_holder``)
    and start the managed server."""
    if port_check.ok:
        return Step(name="free port", done=False, summary="nothing to do: the port is ours")
    pid = port_check.details.get("pid")
    holder = str(port_check.details.get("holder", ""))
    stray_opencode = "opencode" in holder and " serve" in holder
    if pid is not None and not (stray_opencode or stop_holder):
        return Step(
            name="free port",
            done=False,
            ok=False,
            summary=f"not stopping {holder}: it is not an OpenCode server (set "
            "stop_holder=True to stop it anyway, or move the server with "
            "NEXUS_OPENCODE_PORT)",
        )
    if dry_run:
        what = f"stop {holder} and " if pid is not None else ""
        return Step(name="free port", done=False, summary=f"would {what}start the server")
    if pid is not None:
        survivors = terminate_tree(identify(int(str(pid))), grace=5.0)
        if survivors:
            return Step(
                name="free port",
                done=True,
                ok=False,
                summary=f"{holder} survived SIGKILL: {survivors}",
            )
    try:
        result = ctx.agent().start()
    except NexusOpsError as exc:
        return Step(name="free port", done=True, ok=False, summary=exc.message)
    stopped = f"stopped {holder}; " if pid is not None else ""
    return Step(
        name="free port", done=True, ok=result.ok, summary=f"{stopped}server {result.message}"
    )
