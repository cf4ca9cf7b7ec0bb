"""The typed client of the agent's HTTP API (httpx), used by the CLI, console and runbooks.

>>> client = AgentClient("http://127.0.0.1:1420", token="t")
>>> client.base_url
'http://127.0.0.1:1420'
"""

from __future__ import annotations

import contextlib
import functools
import socket
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from nexus_ops.alerts import AlertsView
from nexus_ops.backup.models import BackupInfo, Manifest, PruneReport, RestoreReport, VerifyReport
from nexus_ops.config import Settings
from nexus_ops.entry.pairing import PairingCode
from nexus_ops.errors import AgentError, AgentUnavailable, PortInUse, Unauthorized
from nexus_ops.models import (
    ActionResult,
    AgentHealth,
    Event,
    Readiness,
    ServerStatus,
    StopReason,
)
from nexus_ops.paths import Layout
from nexus_ops.process import (
    accepts_connections,
    find_live,
    listen_addresses,
    load_record,
    port_holder,
)
from nexus_ops.runbooks.models import Runbook
from nexus_ops.store.devices import Device
from nexus_ops.store.runs import RunRecord
from nexus_ops.upgrade.record import OperationRecord

if TYPE_CHECKING:  # pandas loads with the first query, not with every CLI command
    import pandas as pd

    from nexus_ops.metrics.frames import Points

API = "/api/v1"


class AgentClient:
    """Talks to one agent; every call has a timeout; errors say what to do.

    ``verify``, when given, runs before every request and raises when the peer must
    not be sent the token (see :func:`verify_local_agent`).
    """

    def __init__(
        self,
        base_url: str,
        token: str | Path,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        verify: Callable[[], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._verify = verify
        self._http = httpx.Client(
            base_url=self.base_url, auth=BearerAuth(token), timeout=timeout, transport=transport
        )

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float = 10.0) -> AgentClient:
        """A client of the agent of these settings, with the token from its secrets folder.

        Without NEXUS_AGENT_URL the agent is this host's own: every request first checks
        that the process on its port is the agent of the pidfile. With NEXUS_AGENT_URL
        the operator vouches for that address (another host, container or a tunnel).
        """
        verify = None if settings.agent_url else functools.partial(verify_local_agent, settings)
        token_file = Layout(settings.home).agent_token_file
        return cls(settings.agent_base_url, token_file, timeout, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; map transport failures and error answers to nexus-ops errors."""
        if self._verify is not None:
            self._verify()
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise AgentUnavailable(
                f"no agent answers at {self.base_url} ({type(exc).__name__})",
                hint="start it with `nexus-ops agent start` (or check NEXUS_AGENT_URL)",
            ) from exc
        if response.status_code == 401:
            raise Unauthorized(
                "the agent refused the token",
                hint="use the token in $NEXUS_HOME/secrets/agent.token of the agent's host",
                status=401,
            )
        if response.status_code >= 400 and not (path == "/ready" and response.status_code == 503):
            raise _error(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def health(self) -> AgentHealth:
        return AgentHealth.model_validate(self.json("GET", "/health"))

    def ready(self) -> Readiness:
        return Readiness.model_validate(self.json("GET", "/ready"))

    def status(self) -> ServerStatus:
        return ServerStatus.model_validate(self.json("GET", f"{API}/status"))

    def start(self, wait: bool = True) -> ActionResult:
        return self._action("start", wait)

    def stop(self, when_idle: bool = False, reason: StopReason = "operator") -> ActionResult:
        """Stop the server: now, or with ``when_idle`` once no session is busy (the
        answer comes once it is stopped, at most NEXUS_DRAIN_TIMEOUT later)."""
        params = {"when_idle": str(when_idle).lower(), "reason": reason}
        timeout = 3600 if when_idle else 60
        body = self.json("POST", f"{API}/server/stop", params=params, timeout=timeout)
        return ActionResult.model_validate(body)

    def restart(self, wait: bool = True, when_idle: bool = False) -> ActionResult:
        """Restart the server: now, or with ``when_idle`` once no session is busy."""
        return self._action("restart", wait, when_idle=when_idle)

    def _action(self, verb: str, wait: bool, **flags: bool) -> ActionResult:
        params = {"wait": str(wait).lower()}
        params.update({name: str(value).lower() for name, value in flags.items() if value})
        body = self.json("POST", f"{API}/server/{verb}", params=params, timeout=90)
        return ActionResult.model_validate(body)

    def events(
        self,
        since: float | None = None,
        kinds: list[str] | None = None,
        limit: int = 200,
        after_id: int | None = None,
    ) -> list[Event]:
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = since
        if after_id is not None:
            params["after_id"] = after_id
        if kinds:
            params["kind"] = kinds
        return [Event.model_validate(e) for e in self.json("GET", f"{API}/events", params=params)]

    def logs(self, lines: int = 200, contains: str | None = None) -> list[str]:
        return self.log_chunk(lines, contains)[0]

    def log_chunk(
        self, lines: int = 200, contains: str | None = None, after: int | None = None
    ) -> tuple[list[str], int]:
        """The log's last ``lines`` lines, or the first ones past offset ``after``; and the
        offset to pass as ``after`` next time (to follow the log without repeating a line)."""
        params: dict[str, Any] = {"lines": lines}
        if contains:
            params["contains"] = contains
        if after is not None:
            params["after"] = after
        body = self.json("GET", f"{API}/logs", params=params)
        return list(body["lines"]), int(body["offset"])

    def config(self) -> dict[str, Any]:
        return dict(self.json("GET", f"{API}/config"))

    def alerts(self) -> AlertsView:
        """Every alert rule with its state, the webhooks' status and recent notifications."""
        return AlertsView.model_validate(self.json("GET", f"{API}/alerts"))

    def metrics_text(self) -> str:
        return self.request("GET", "/metrics").text

    def openapi(self) -> dict[str, Any]:
        return dict(self.json("GET", f"{API}/openapi.json"))

    def query_metrics(
        self,
        metric: str,
        labels: Mapping[str, str] | str | None = None,
        start: str | float | datetime = "1h",
        end: str | float | datetime = "now",
        max_points: int = 2000,
        resolution: str = "auto",
        method: str = "minmax",
        agg: str = "mean",
        since: float | None = None,
    ) -> pd.DataFrame:
        """Metric history as a tidy DataFrame (time, metric, labels, value).

        ``start``/``end``: epoch seconds, a datetime, ISO 8601 text, ``now``, or a
        duration before now (``24h``). ``since``: only what is new after these epoch
        seconds (raw points after it, rollup buckets from the one holding it), to
        append to what an earlier answer gave. See
        :class:`nexus_ops.metrics.backends.MetricQuery`.
        """
        from nexus_ops.metrics.frames import frame_from_payload

        params = _query_params(
            metric, labels, start, end, max_points, resolution, method, agg, since
        )
        return frame_from_payload(self.json("GET", f"{API}/metrics/query", params=params))

    def query_metrics_many(self, queries: Sequence[Mapping[str, Any]]) -> list[pd.DataFrame]:
        """Several queries in one request: each a mapping of :meth:`query_metrics`'
        arguments (``metric`` required); their frames, in order."""
        from nexus_ops.metrics.frames import frame_of

        return [frame_of(points) for points in self.query_points_many(queries)]

    def query_points_many(self, queries: Sequence[Mapping[str, Any]]) -> list[list[Points]]:
        """What :meth:`query_metrics_many` asks, as each query's series' arrays."""
        from nexus_ops.metrics.frames import points_from_payload

        body = {"queries": [_query_params(**query) for query in queries]}
        answer = self.json("POST", f"{API}/metrics/queries", json=body)
        return [points_from_payload(result) for result in answer["results"]]

    def metric_names(self) -> list[str]:
        """Names of the metrics the agent's store holds."""
        return list(self.json("GET", f"{API}/metrics/names"))

    def usage(self, sessions: int = 10) -> dict[str, Any]:
        """The models' usage: totals per model, tool calls, prompts in flight, tokens per
        day and model, and the ``sessions`` busiest sessions (see docs/metrics.md)."""
        return dict(self.json("GET", f"{API}/usage", params={"sessions": sessions}))

    def metrics_store(self) -> dict[str, Any]:
        """Size of the agent's metrics.db, its samples, and each tier's retention."""
        return dict(self.json("GET", f"{API}/metrics/store"))

    # ---- backups -----------------------------------------------------------------------

    def backups(self) -> list[BackupInfo]:
        """Complete backups, newest first."""
        return [BackupInfo.model_validate(b) for b in self.json("GET", f"{API}/backups")]

    def create_backup(self, include_nexus: bool | None = None) -> Manifest:
        body = {"include_nexus": include_nexus}
        return Manifest.model_validate(self.json("POST", f"{API}/backups", json=body, timeout=3600))

    def backup(self, backup_id: str) -> Manifest:
        return Manifest.model_validate(self.json("GET", f"{API}/backups/{backup_id}"))

    def backup_schedule(self) -> dict[str, Any]:
        return dict(self.json("GET", f"{API}/backups/schedule"))

    def verify_backup(self, backup_id: str) -> VerifyReport:
        body = self.json("POST", f"{API}/backups/{backup_id}/verify", timeout=3600)
        return VerifyReport.model_validate(body)

    def prune_backups(self, dry_run: bool = True) -> PruneReport:
        params = {"dry_run": str(dry_run).lower()}
        return PruneReport.model_validate(
            self.json("POST", f"{API}/backups/prune", params=params, timeout=600)
        )

    def restore_backup(
        self, backup_id: str, parts: list[str] | None = None, to_folder: str | None = None
    ) -> RestoreReport:
        """Restore into ``to_folder``, or over the live folders (the agent stops and starts
        the server, and rolls back if anything fails)."""
        body = {"parts": parts, "to_folder": to_folder}
        return RestoreReport.model_validate(
            self.json("POST", f"{API}/backups/{backup_id}/restore", json=body, timeout=3600)
        )

    # ---- upgrades ----------------------------------------------------------------------

    def upgrade_status(self) -> dict[str, Any]:
        """The current or last upgrade or rollback (``operation``), and the counts."""
        return dict(self.json("GET", f"{API}/opencode/upgrade"))

    def upgrade_operation(self) -> OperationRecord | None:
        found = self.upgrade_status().get("operation")
        return None if found is None else OperationRecord.model_validate(found)

    def upgrade(
        self, version: str | None = None, dry_run: bool = False, probation: float | None = None
    ) -> dict[str, Any]:
        """Begin an upgrade (answers once begun: follow :meth:`upgrade_operation`), or with
        ``dry_run`` only get its plan."""
        body = {"version": version, "dry_run": dry_run, "probation_minutes": probation}
        return dict(self.json("POST", f"{API}/opencode/upgrade", json=body, timeout=600))

    def rollback(self) -> OperationRecord:
        """Roll the last upgrade back (answers once done)."""
        body = self.json("POST", f"{API}/opencode/rollback", timeout=3600)
        return OperationRecord.model_validate(body)

    # ---- runbooks ----------------------------------------------------------------------

    def runbooks(self) -> list[Runbook]:
        return [Runbook.model_validate(r) for r in self.json("GET", f"{API}/runbooks")]

    def runbook(self, name: str) -> Runbook:
        return Runbook.model_validate(self.json("GET", f"{API}/runbooks/{name}"))

    def start_run(
        self, name: str, parameters: Mapping[str, Any] | None = None, who: str | None = None
    ) -> RunRecord:
        """Start a runbook in the agent; the parameters are checked before it starts."""
        body = {"parameters": dict(parameters or {}), "who": who}
        return RunRecord.model_validate(self.json("POST", f"{API}/runbooks/{name}/runs", json=body))

    def runs(self, limit: int = 50, runbook: str | None = None) -> list[RunRecord]:
        params: dict[str, Any] = {"limit": limit}
        if runbook:
            params["runbook"] = runbook
        return [RunRecord.model_validate(r) for r in self.json("GET", f"{API}/runs", params=params)]

    def run(self, run_id: str) -> RunRecord:
        return RunRecord.model_validate(self.json("GET", f"{API}/runs/{run_id}"))

    def wait_run(self, run_id: str, timeout: float = 600.0, interval: float = 0.5) -> RunRecord:
        """Poll a run until it is no longer running (or ``timeout`` s have passed)."""
        deadline = time.monotonic() + timeout
        record = self.run(run_id)
        while record.status == "running" and time.monotonic() < deadline:
            time.sleep(interval)
            record = self.run(run_id)
        return record

    def run_notebook(self, run_id: str) -> dict[str, Any]:
        """The executed notebook of a run (its audit record), as JSON."""
        return dict(self.json("GET", f"{API}/runs/{run_id}/notebook"))

    def run_html(self, run_id: str) -> str:
        """The executed notebook of a run as sanitised HTML, secrets masked."""
        return self.request("GET", f"{API}/runs/{run_id}/html").text

    # ---- remote devices ----------------------------------------------------------------

    def create_pairing(self, name: str | None = None) -> PairingCode:
        """A one-time pairing code and its link (``nexus-ops pair``)."""
        body = {"name": name} if name else {}
        return PairingCode.model_validate(self.json("POST", f"{API}/pairings", json=body))

    def devices(self) -> list[Device]:
        """Paired devices whose session is live, newest first."""
        return [Device.model_validate(d) for d in self.json("GET", f"{API}/devices")]

    def revoke_device(self, device_id: str) -> Device:
        return Device.model_validate(self.json("DELETE", f"{API}/devices/{device_id}"))

    def revoke_all_devices(self) -> list[str]:
        """End every device's session; the ids ended."""
        return list(self.json("DELETE", f"{API}/devices")["revoked"])


def verify_local_agent(settings: Settings) -> None:
    """Raise unless the process listening on the agent's port is this NEXUS_HOME's agent.

    The agent is the live process of its pidfile (pid, create time and command line,
    so a reused pid does not pass). Each address the agent's host resolves to must be
    one the agent listens on, or one where nothing listens (the connection fails over):
    a process squatting the port is never sent the token, whatever it answers.
    """
    port = settings.agent_port

    def agents_addresses() -> list[str]:
        record = load_record(Layout(settings.home).agent_pidfile)
        return listen_addresses(record.pid, port) if record and find_live(record) else []

    mine = agents_addresses()
    answered = False
    for address in _addresses(settings):
        if not _covers(mine, address) and accepts_connections(address, port):
            mine = agents_addresses()  # a starting agent may listen since the first look
            if not _covers(mine, address):
                holder = port_holder(port) or "a process this user cannot see"
                raise PortInUse(
                    f"port {port} on {address} is held by {holder}, not by the agent of "
                    f"NEXUS_HOME {settings.home}; the agent token was not sent to it",
                    hint=f"stop that process, or choose another port with NEXUS_AGENT_PORT "
                    f"(now {port})",
                )
        answered = answered or _covers(mine, address)
    if not answered:
        raise AgentUnavailable(
            f"no agent answers at {settings.agent_base_url}",
            hint="start it with `nexus-ops agent start` (or check NEXUS_AGENT_URL)",
        )


def _addresses(settings: Settings) -> list[str]:
    """The addresses a connection to the agent's URL may go to."""
    host = urlsplit(settings.agent_base_url).hostname or ""
    try:
        found = socket.getaddrinfo(host, settings.agent_port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise AgentUnavailable(
            f"cannot resolve the agent's host {host!r}: {exc}",
            hint="check NEXUS_AGENT_HOST",
        ) from exc
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def _covers(listening: list[str], address: str) -> bool:
    """Does a socket on one of ``listening`` receive connections to ``address``?"""
    wildcard = "::" if ":" in address else "0.0.0.0"  # noqa: S104 - compared, not bound
    # Linux's IPv6 wildcard is dual-stack by default: it receives IPv4 too.
    return address in listening or wildcard in listening or "::" in listening


def _query_params(
    metric: str,
    labels: Mapping[str, str] | str | None = None,
    start: str | float | datetime = "1h",
    end: str | float | datetime = "now",
    max_points: int = 2000,
    resolution: str = "auto",
    method: str = "minmax",
    agg: str = "mean",
    since: float | None = None,
) -> dict[str, Any]:
    from nexus_ops.metrics.frames import labels_text

    params: dict[str, Any] = {
        "metric": metric,
        "start": _time_param(start),
        "end": _time_param(end),
        "max_points": max_points,
        "resolution": resolution,
        "method": method,
        "agg": agg,
    }
    if labels:
        params["labels"] = labels if isinstance(labels, str) else labels_text(labels)
    if since is not None:
        params["since"] = since
    return params


def _time_param(value: str | float | datetime) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


class BearerAuth(httpx.Auth):
    """The agent's token, given or read from its file when first needed.

    The file is read late because a client may be made before the agent that
    writes the token has started.
    """

    def __init__(self, token: str | Path) -> None:
        self._token = token if isinstance(token, str) else ""
        self._file = token if isinstance(token, Path) else None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not self._token and self._file is not None:
            with contextlib.suppress(FileNotFoundError):
                self._token = self._file.read_text(encoding="utf-8").strip()
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def _error(response: httpx.Response) -> AgentError:
    try:
        body = response.json()
        message, hint = str(body["error"]), body.get("hint")
    except (ValueError, KeyError, TypeError):  # not the agent's {error, hint}: a proxy's page
        message, hint = response.text[:300], None
    return AgentError(message, hint=hint, status=response.status_code)
