"""The security posture of one host: each item passes, warns or fails, and says what to do.

Items: the server's password (set, strong, and demanded by the running server),
the agent's token, the secret files' permissions, the addresses the agent, the
server and the console bind, who else can read the backups and the databases,
the alert webhooks, the HTTPS entry (TLS, its certificate's expiry, its address),
and the OpenCode version against the pinned one.

A file counts as *readable by others* when its mode lets every user read it and
every folder above it lets every user through; a secret file must be 0600 in a
0700 folder whatever its parents are.

>>> # report = posture_check(load_settings()); report.ok, print(report.text())
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field

from nexus_ops.alerts.rules import load_config
from nexus_ops.config import Settings
from nexus_ops.entry.report import EXPIRY_WARNING, entry_state
from nexus_ops.entry.tls import EntryFiles
from nexus_ops.errors import NexusOpsError
from nexus_ops.models import Frozen
from nexus_ops.opencode import binary_version
from nexus_ops.paths import Layout
from nexus_ops.redact import mask_url
from nexus_ops.security.tokens import is_loopback, token_problem
from nexus_ops.versions import selected_binary

Status = Literal["pass", "warn", "fail"]
_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}


class PostureItem(Frozen):
    """One finding: its status, what was seen, and what to do about it."""

    name: str
    status: Status
    summary: str
    fix: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class PostureReport(Frozen):
    """Every item; ``ok`` unless one fails."""

    home: str
    time: float
    items: list[PostureItem]

    @property
    def ok(self) -> bool:
        return all(item.status != "fail" for item in self.items)

    def failed(self) -> list[PostureItem]:
        return [item for item in self.items if item.status == "fail"]

    def text(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        lines = [f"security posture of {self.home}: {verdict}"]
        for item in self.items:
            lines.append(f"  [{_MARK[item.status]}] {item.name}: {item.summary}")
            if item.fix and item.status != "pass":
                lines.append(f"         fix: {item.fix}")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        rows = ["| item | status | finding | what to do |", "|---|---|---|---|"]
        for item in self.items:
            fix = item.fix if item.status != "pass" else ""
            rows.append(
                f"| {item.name} | {_MARK[item.status]} | {_cell(item.summary)} | {_cell(fix)} |"
            )
        verdict = "PASS" if self.ok else "FAIL"
        return f"**Security posture: {verdict}** ({self.home})\n\n" + "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def posture_check(settings: Settings, probe_timeout: float = 1.0) -> PostureReport:
    """Run every posture check of this host's settings and files."""
    from nexus_ops.security.devices import device_sessions  # it builds on PostureItem

    layout = Layout(settings.home)
    checks: list[Callable[[], PostureItem | None]] = [
        lambda: server_password(settings, layout, probe_timeout),
        lambda: agent_token(layout),
        lambda: secret_files(layout),
        lambda: binds(settings),
        lambda: console_bind(settings),
        lambda: entry(settings),
        lambda: data_permissions(settings, layout),
        lambda: webhooks(settings),
        lambda: opencode_version(settings, layout),
        lambda: device_sessions(layout),
    ]
    items = [item for check in checks if (item := check()) is not None]
    return PostureReport(home=str(layout.home), time=time.time(), items=items)


# ---- secrets ----------------------------------------------------------------------------


def _read_secret(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def server_password(settings: Settings, layout: Layout, timeout: float) -> PostureItem:
    name = "server password"
    password = _read_secret(layout.server_password_file)
    if not password:
        return PostureItem(
            name=name,
            status="warn",
            summary=f"no password yet in {layout.server_password_file}",
            fix="start the agent (`nexus-ops agent start`): it generates one before the server runs",
        )
    problem = token_problem(password)
    if problem is not None:
        return PostureItem(
            name=name,
            status="fail",
            summary=f"the server password {problem}",
            fix=f"delete {layout.server_password_file} and restart the server: a strong one is made",
        )
    answer = _unauthenticated_status(settings.opencode_base_url, timeout)
    if answer is not None and answer < 400:
        return PostureItem(
            name=name,
            status="fail",
            summary=f"the server at {settings.opencode_base_url} answers without a password "
            f"(HTTP {answer}): it was not started by nexus-ops",
            fix="stop that server and start it with `nexus-ops server start`",
        )
    seen = "demanded by the running server" if answer == 401 else "server not running"
    return PostureItem(name=name, status="pass", summary=f"set and strong; {seen}")


def _unauthenticated_status(base_url: str, timeout: float) -> int | None:
    """The status of ``GET /global/health`` without credentials, or None when nothing answers."""
    try:
        return httpx.get(f"{base_url}/global/health", timeout=timeout).status_code
    except httpx.HTTPError:
        return None


def agent_token(layout: Layout) -> PostureItem:
    name = "agent token"
    token = _read_secret(layout.agent_token_file)
    if not token:
        return PostureItem(
            name=name,
            status="warn",
            summary=f"no token yet in {layout.agent_token_file}",
            fix="start the agent once (`nexus-ops agent start`): it generates a strong token",
        )
    problem = token_problem(token)
    if problem is not None:
        return PostureItem(
            name=name,
            status="fail",
            summary=f"the agent token {problem}",
            fix=f"delete {layout.agent_token_file} and restart the agent: a strong one is made",
        )
    return PostureItem(name=name, status="pass", summary=f"{len(token)} random characters")


def secret_files(layout: Layout) -> PostureItem:
    """The secrets folder is 0700 and each file in it 0600, both owned by this user."""
    name = "secret files"
    folder = layout.secrets
    if not folder.is_dir():
        return PostureItem(name=name, status="pass", summary=f"no secrets folder yet ({folder})")
    loose = [f"{folder} is {_mode(folder):o}"] if _mode(folder) & 0o077 else []
    files = sorted(p for p in folder.iterdir() if p.is_file())
    loose += [f"{p.name} is {_mode(p):o}" for p in files if _mode(p) & 0o077]
    foreign = [p.name for p in [folder, *files] if p.stat().st_uid != os.getuid()]
    if loose or foreign:
        problems = loose + [f"{n} belongs to another user" for n in foreign]
        return PostureItem(
            name=name,
            status="fail",
            summary="secrets readable by others: " + "; ".join(problems),
            fix=f"chmod 700 {folder} && chmod 600 {folder}/*  (or run the security_audit "
            "runbook with dry_run=False)",
            details={"problems": problems},
        )
    return PostureItem(
        name=name, status="pass", summary=f"{folder} is 700 and its {len(files)} file(s) 600"
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- addresses ---------------------------------------------------------------------------


def binds(settings: Settings) -> PostureItem:
    """The agent's and the server's addresses: loopback, or remote only when allowed."""
    name = "bind addresses"
    remote = [
        (var, host)
        for var, host in (
            ("NEXUS_AGENT_HOST", settings.agent_host),
            ("NEXUS_OPENCODE_HOST", settings.opencode_host),
        )
        if not is_loopback(host)
    ]
    if not remote:
        return PostureItem(
            name=name, status="pass", summary="the agent and the server listen on loopback only"
        )
    shown = ", ".join(f"{var}={host}" for var, host in remote)
    if not settings.allow_remote:
        return PostureItem(
            name=name,
            status="fail",
            summary=f"{shown} is not loopback and NEXUS_ALLOW_REMOTE is off (the agent refuses it)",
            fix="listen on 127.0.0.1 and reach it through an SSH tunnel or a TLS proxy; or set "
            "NEXUS_ALLOW_REMOTE=true on purpose",
        )
    return PostureItem(
        name=name,
        status="warn",
        summary=f"{shown}: remote access is on (NEXUS_ALLOW_REMOTE); every request needs the token",
        fix="put a TLS proxy in front (docs/deployment.md): tokens and passwords cross the network",
    )


def console_bind(settings: Settings) -> PostureItem | None:
    """The console's address, when this version of nexus-ops has a console setting."""
    host = getattr(settings, "console_host", None)
    if not isinstance(host, str):
        return None
    if is_loopback(host):
        return PostureItem(name="console bind", status="pass", summary=f"console on {host}")
    status: Status = "warn" if settings.allow_remote else "fail"
    return PostureItem(
        name="console bind",
        status=status,
        summary=f"NEXUS_CONSOLE_HOST={host} is not loopback"
        + ("" if settings.allow_remote else " and NEXUS_ALLOW_REMOTE is off"),
        fix="keep the console on 127.0.0.1 and use an SSH tunnel, or a TLS proxy",
    )


def entry(settings: Settings) -> PostureItem:
    """The HTTPS entry: off, or on with its TLS, its certificate's expiry and its address."""
    state = entry_state(settings)
    details: dict[str, Any] = {
        "on": state.on,
        "tls": state.tls,
        "bind": f"{state.bind}",
        "port": state.port,
        "running": state.pid is not None,
        "expires": state.expires.timestamp() if state.expires else None,
    }
    name = "https entry"
    if not state.on:
        return PostureItem(name=name, status="pass", summary="off (NEXUS_ENTRY)", details=details)
    where = f"on {state.bind}:{state.port}"
    if state.tls == "off":
        exposed = not is_loopback(state.bind)
        return PostureItem(
            name=name,
            status="fail" if exposed else "warn",
            summary=f"{where} without TLS (NEXUS_ENTRY_TLS=off)",
            fix="keep NEXUS_ENTRY_TLS=off only behind a proxy that terminates TLS, with "
            "NEXUS_ENTRY_BIND on loopback; else set NEXUS_ENTRY_TLS=on",
            details=details,
        )
    loose = loose_ca_keys(settings)
    if loose:
        return PostureItem(
            name=name,
            status="fail",
            summary=f"{where}; the local CA's keys can be read by others: {', '.join(loose)}",
            fix="chmod 600 them (the agent does so while the entry runs); anyone holding them "
            "can make certificates the devices that trust the CA accept",
            details=details,
        )
    return _entry_certificate(name, where, state.tls, state.expires, details)


def loose_ca_keys(settings: Settings) -> list[str]:
    """The local CA's key files (with their modes) that are not 0600."""
    found = []
    for key in EntryFiles.of(settings).ca_keys:
        if key.exists() and _mode(key) != 0o600:
            found.append(f"{key} ({_mode(key):04o})")
    return found


def _entry_certificate(
    name: str, where: str, mode: str, expires: dt.datetime | None, details: dict[str, Any]
) -> PostureItem:
    shown = "the local CA's certificate" if mode == "internal" else "NEXUS_ENTRY_CERT"
    if expires is None:
        return PostureItem(
            name=name,
            status="warn",
            summary=f"{where}, TLS with {shown}; no certificate to read yet",
            fix="start the agent with NEXUS_ENTRY=on (Caddy makes the certificates), then check "
            "again; `nexus-ops entry status` shows Caddy's state",
            details=details,
        )
    left = expires - dt.datetime.now(dt.UTC)
    summary = f"{where}, TLS with {shown}, expires {expires:%Y-%m-%d %H:%M} UTC"
    if left.total_seconds() <= 0:
        return PostureItem(
            name=name,
            status="fail",
            summary=summary + " (expired)",
            fix="renew the certificate (own: replace the files; local CA: restart the entry)",
            details=details,
        )
    # The local CA's leaves live 12 hours and Caddy renews them; an own one must be renewed.
    if mode == "own" and left < EXPIRY_WARNING:
        return PostureItem(
            name=name,
            status="warn",
            summary=summary + f" (in {left.days} days)",
            fix="renew NEXUS_ENTRY_CERT and NEXUS_ENTRY_KEY, then restart the agent",
            details=details,
        )
    return PostureItem(name=name, status="pass", summary=summary, details=details)


# ---- data ------------------------------------------------------------------------------


def readable_by_others(path: Path) -> bool:
    """True when any user can read ``path``: world-readable, and every folder above passable."""
    try:
        if not _mode(path) & stat.S_IROTH:
            return False
        return all(_mode(folder) & stat.S_IXOTH for folder in path.resolve().parents)
    except OSError:
        return False


def _exposed(paths: Iterable[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += [p for p in path.rglob("*") if p.is_file() and readable_by_others(p)]
        elif path.exists() and readable_by_others(path):
            found.append(path)
    return found


def data_permissions(settings: Settings, layout: Layout) -> PostureItem:
    """Backups and OpenCode's data (sessions, provider keys) must not be readable by others;
    nexus-ops's own database and logs should not be."""
    name = "data permissions"
    opencode_data = opencode_data_dir()
    critical = _exposed([layout.backups, opencode_data])
    minor = _exposed(
        [
            layout.database,
            layout.metrics_database,
            layout.logs,
            layout.runs,
            layout.home / "agent-test.log",
        ]
    )
    if critical:
        listed = ", ".join(str(p) for p in critical[:5]) + (" ..." if len(critical) > 5 else "")
        return PostureItem(
            name=name,
            status="fail",
            summary=f"{len(critical)} file(s) of backups or OpenCode's data readable by every user: {listed}",
            fix=f"chmod 700 {layout.home} {layout.backups} {opencode_data} (or run the "
            "security_audit runbook with dry_run=False)",
            details={"files": [str(p) for p in critical]},
        )
    if minor:
        return PostureItem(
            name=name,
            status="warn",
            summary=f"{len(minor)} file(s) of nexus-ops (database, logs, runs) readable by every user",
            fix=f"chmod 700 {layout.home}",
            details={"files": [str(p) for p in minor]},
        )
    return PostureItem(
        name=name,
        status="pass",
        summary="backups, databases and logs are readable by this user only",
    )


def opencode_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "opencode"


# ---- webhooks and versions ---------------------------------------------------------------


def webhooks(settings: Settings) -> PostureItem:
    """Alert webhooks: plain http to another host sends alerts (and tokens) in clear."""
    name = "alert webhooks"
    try:
        hooks = load_config(settings).webhooks
    except NexusOpsError as exc:
        return PostureItem(
            name=name, status="fail", summary=exc.message, fix=exc.hint or "fix NEXUS_ALERTS_FILE"
        )
    clear = [
        mask_url(h.url)
        for h in hooks
        if h.url.startswith("http://") and not is_loopback(httpx.URL(h.url).host)
    ]
    exposed = settings.alerts_file is not None and readable_by_others(settings.alerts_file)
    if exposed and any(h.token or h.headers or "@" in h.url for h in hooks):
        return PostureItem(
            name=name,
            status="fail",
            summary=f"{settings.alerts_file} holds webhook credentials and every user can read it",
            fix=f"chmod 600 {settings.alerts_file}",
        )
    if clear:
        return PostureItem(
            name=name,
            status="warn",
            summary="plain http to another host: " + ", ".join(clear),
            fix="use https:// webhook URLs",
        )
    return PostureItem(name=name, status="pass", summary=f"{len(hooks)} webhook(s), none in clear")


def opencode_version(settings: Settings, layout: Layout) -> PostureItem:
    name = "OpenCode version"
    pinned = settings.opencode_version
    try:
        binary = selected_binary(settings).binary
        version = binary_version(binary)
    except NexusOpsError as exc:
        return PostureItem(
            name=name,
            status="warn",
            summary=f"no OpenCode binary to check ({exc.message})",
            fix="`nexus-ops opencode install` installs the pinned version",
        )
    if version.strip().lstrip("v") != pinned:
        return PostureItem(
            name=name,
            status="warn",
            summary=f"{binary} is {version}, the pinned version is {pinned}",
            fix=f"`nexus-ops opencode install` (installs {pinned}), or pin the version you "
            "mean with NEXUS_OPENCODE_VERSION",
            details={"binary": str(binary), "version": version, "pinned": pinned},
        )
    return PostureItem(name=name, status="pass", summary=f"{version}, the pinned version")
