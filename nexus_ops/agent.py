"""The agent: one per host; owns the OpenCode server and serves its HTTP API.

``GET /health`` (the agent is alive) and ``GET /ready`` (the server is running
and answering) need no token; everything else needs ``Authorization: Bearer
<token>`` with the token of ``$NEXUS_HOME/secrets/agent.token``. State changes
are POSTs. The OpenAPI document is at ``/api/v1/openapi.json``.

>>> # app = create_app(load_settings()); uvicorn.run(app)  (or `nexus-ops agent`)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hmac
import logging
import math
import os
import re
import reprlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs, quote

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from nexus_ops import __version__, logs
from nexus_ops.alerts import AlertService, AlertsView, load_config
from nexus_ops.alerts.service import ReadingLike
from nexus_ops.backup import BackupService, CallbackControl
from nexus_ops.backup.models import (
    BACKUP_ID_PATTERN,
    BackupInfo,
    Manifest,
    PruneReport,
    RestoreReport,
    VerifyReport,
)
from nexus_ops.config import Settings, settings_table
from nexus_ops.entry.caddy import CaddyEntry, check_entry
from nexus_ops.entry.devices import COOKIE, DeviceSessions, safe_next, session_cookie
from nexus_ops.entry.pages import PAGE_HEADERS, logged_out_page, pair_page
from nexus_ops.entry.pairing import PairingCode, entry_names
from nexus_ops.errors import (
    AgentError,
    BinaryNotFound,
    NexusOpsError,
    OpenCodeUnavailable,
    PairingRefused,
    ParameterError,
    PortInUse,
    SecurityError,
    StorageFull,
    Unauthorized,
    UnsafeArchive,
)
from nexus_ops.metrics import catalogue
from nexus_ops.metrics.exposition import CONTENT_TYPE, Exposition
from nexus_ops.metrics.service import MetricsService
from nexus_ops.models import (
    ActionResult,
    AgentHealth,
    ErrorBody,
    Event,
    EventKind,
    Frozen,
    Readiness,
    RestartReason,
    ServerStatus,
    StopReason,
)
from nexus_ops.paths import Layout, read_or_create_secret
from nexus_ops.process import check_port_free, identify, remove_record, save_record
from nexus_ops.redact import redact
from nexus_ops.runbooks.models import Runbook
from nexus_ops.runbooks.service import RunbookService
from nexus_ops.security.tokens import (
    HOST_HINT,
    allowed_hosts,
    host_allowed,
    is_loopback,
    refused_host_message,
    require_strong_token,
)
from nexus_ops.store import Database, Journal
from nexus_ops.store.devices import Device, DeviceStore
from nexus_ops.store.runs import RunRecord
from nexus_ops.supervisor import Supervisor
from nexus_ops.upgrade import OperationRecord, UpgradeService
from nexus_ops.upgrade.metrics import UpgradeCollector, count_values

log = logging.getLogger(__name__)
T = TypeVar("T")
API = "/api/v1"

# Extra jobs (samplers, schedulers) that start with the agent: each gets the
# running AgentContext and runs until cancelled.
BackgroundJob = Callable[["AgentContext"], Coroutine[Any, Any, None]]


@dataclass
class AgentContext:
    """What the routes and background jobs share."""

    settings: Settings
    layout: Layout
    token: str
    database: Database
    journal: Journal
    supervisor: Supervisor
    exposition: Exposition
    started: float = field(default_factory=time.time)
    metrics: MetricsService | None = None
    alerts: AlertService | None = None
    backups: BackupService | None = None
    runbooks: RunbookService | None = None
    devices: DeviceSessions | None = None
    upgrades: UpgradeService | None = None
    # The supervisor's own event loop (the main one when the agent does not supervise).
    supervisor_loop: asyncio.AbstractEventLoop | None = None
    store_problems: list[str] = field(default_factory=list)
    entry: CaddyEntry | None = None  # the HTTPS entry, with NEXUS_ENTRY=on


class LogTail(Frozen):
    lines: list[str]
    offset: int = Field(description="Byte offset past the last line read; pass it as `after`.")


class SettingRow(Frozen):
    variable: str
    value: str
    description: str


class ConfigView(Frozen):
    profile: str
    settings: list[SettingRow]


def create_app(
    settings: Settings, jobs: list[BackgroundJob] | None = None, manage: bool = True
) -> FastAPI:
    """The agent's ASGI app; ``manage=False`` serves the API without supervising."""
    layout = Layout(settings.home).ensure()
    token = read_or_create_secret(layout.agent_token_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(layout.database, set_aside_damaged=True)
        journal = Journal(database)
        supervisor = Supervisor(settings, journal)
        exposition = Exposition(supervisor.status, lambda: supervisor.counters, __version__)
        supervisor.request_observers.append(exposition.observe_request)
        ctx = AgentContext(settings, layout, token, database, journal, supervisor, exposition)
        ctx.metrics = MetricsService(settings, supervisor)
        exposition.registry.register(ctx.metrics.collector())
        exposition.registry.register(ctx.metrics.usage_collector())
        ctx.alerts = AlertService.from_settings(settings, journal)
        ctx.backups = BackupService(settings, database, journal)
        exposition.registry.register(ctx.backups.collector())
        ctx.runbooks = RunbookService(settings, database)
        ctx.devices = DeviceSessions.of(settings, DeviceStore(database), journal)
        ctx.supervisor_loop = asyncio.new_event_loop() if manage else asyncio.get_running_loop()
        app.state.ctx = ctx
        journal.record(EventKind.AGENT_START, pid=os.getpid(), message=f"agent {__version__}")
        for store in stores(ctx):
            for problem in store.problems:
                report_store_problem(ctx, store, problem)
        # Before the supervisor applies the desired state: a restore killed half-way
        # is rolled back or finished, and the desired state it changed is put back.
        await asyncio.to_thread(ctx.backups.settle_interrupted_restore)
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(job(ctx)) for job in jobs or []]
        tasks.append(asyncio.create_task(ctx.metrics.run()))
        tasks.append(asyncio.create_task(ctx.backups.run_schedule()))
        tasks.append(asyncio.create_task(watch_stores(ctx)))
        if manage:
            tasks.append(asyncio.create_task(supervise(ctx)))
            ctx.upgrades = UpgradeService(
                settings, journal, supervisor.versions, ctx.backups, SupervisorUpgradeControl(ctx)
            )
            exposition.registry.register(UpgradeCollector(ctx.upgrades.counts))
            # An upgrade or rollback killed half-way is settled once the supervisor runs.
            tasks.append(asyncio.create_task(settle_upgrade(ctx)))
        if manage and settings.entry:
            ctx.entry = CaddyEntry(settings)
            tasks.append(asyncio.create_task(ctx.entry.run()))
        # What starting made lives as long as the agent: out of the collector's passes,
        # which otherwise walk all of it again and again while the agent idles.
        gc.freeze()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if not manage:
                await supervisor.shutdown()
            await asyncio.to_thread(ctx.metrics.close)
            journal.record(EventKind.AGENT_STOP, pid=os.getpid(), message="agent stopped")
            database.close()

    app = FastAPI(
        title="nexus-ops agent",
        version=__version__,
        description="Supervises an OpenCode server: status, control, events, metrics.",
        lifespan=lifespan,
        # The agent's own metrics are its /metrics; OpenTelemetry's hooks, asked on every
        # request whether a provider is set, are left out.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(NexusOpsError, _nexus_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.openapi = _error_shaped_openapi(app)  # type: ignore[method-assign]
    app.middleware("http")(_allow_every_method)
    app.middleware("http")(host_guard(settings))
    app.include_router(public_router())
    app.include_router(api_router(), dependencies=[Depends(require_token)])
    app.include_router(recovery_router(), dependencies=[Depends(require_token)])
    app.include_router(entry_router())
    app.include_router(devices_router(), dependencies=[Depends(require_token)])
    app.include_router(upgrade_router(), dependencies=[Depends(require_token)])
    return app


Middleware = Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]


def host_guard(settings: Settings) -> Middleware:
    """Refuse (403) a request whose ``Host`` is not a name of the agent: a page of another
    site that rebinds its DNS name to 127.0.0.1 must not read even ``/health``."""
    bind = settings.agent_host
    allowed = allowed_hosts(bind, settings.extra_hosts)
    # The entry (on this host) passes the Host its devices asked for: its own names.
    entry = allowed_hosts("::", [*settings.extra_hosts, *entry_names(settings)])

    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        header = request.headers.get("host")
        if host_allowed(header, bind, allowed):
            return await call_next(request)
        if is_entry_path(request.url.path) and host_allowed(header, "::", entry):
            return await call_next(request)
        body = ErrorBody(error=refused_host_message(header), hint=HOST_HINT).model_dump()
        return JSONResponse(body, status_code=403)

    return guard


async def _allow_every_method(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """A 405 lists every documented method of the path in ``Allow`` (Starlette names only
    one route's)."""
    response = await call_next(request)
    if response.status_code == 405:
        path = request.url.path
        paths = request.app.openapi()["paths"]
        # A path of its own (/backups/prune) wins over a template (/backups/{backup_id}).
        templates = (
            [path] if path in paths else [t for t in paths if compile_path(t)[0].match(path)]
        )
        methods = {method.upper() for template in templates for method in paths[template]}
        response.headers["Allow"] = ", ".join(sorted(methods))
    return response


def context(request: Request) -> AgentContext:
    ctx: AgentContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AgentContext, Depends(context)]
_bearer = HTTPBearer(auto_error=False)


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse any request without the agent's bearer token (compared in constant time)."""
    expected = context(request).token.encode()
    given = credentials.credentials.encode() if credentials else b""
    if not hmac.compare_digest(given, expected):
        raise Unauthorized(
            "missing or wrong bearer token",
            hint="send `Authorization: Bearer <token>`; the token is in "
            "$NEXUS_HOME/secrets/agent.token",
            status=401,
        )


_STATUS_BY_ERROR: dict[type[NexusOpsError], int] = {
    Unauthorized: 401,
    PortInUse: 409,
    BinaryNotFound: 424,
    SecurityError: 403,
    ParameterError: 400,
    UnsafeArchive: 422,
    StorageFull: 507,
}


async def _nexus_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NexusOpsError)
    status = next((code for cls, code in _STATUS_BY_ERROR.items() if isinstance(exc, cls)), 500)
    status = getattr(exc, "status", status) if status == 500 else status
    body = ErrorBody(error=exc.message, hint=exc.hint).model_dump()
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (a body that is not JSON, an unknown path, a wrong method)
    in the shape of every other error: ``{"error": ..., "hint": ...}``."""
    assert isinstance(exc, StarletteHTTPException)
    hint = "send JSON with Content-Type: application/json" if exc.status_code == 400 else None
    body = ErrorBody(error=str(exc.detail), hint=hint).model_dump()
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


_SOURCES = {"body", "query", "path", "header", "cookie"}
VALIDATION_HINT = "fix the fields named above (the API is described at /api/v1/openapi.json)"


async def _validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 (a missing, mistyped or out-of-range field) in the shape of every
    other error, naming each field: ``limit='0': Input should be ...``."""
    assert isinstance(exc, RequestValidationError)
    error = "; ".join(describe_problem(problem) for problem in exc.errors())
    return JSONResponse(ErrorBody(error=error, hint=VALIDATION_HINT).model_dump(), 422)


def describe_problem(problem: Mapping[str, Any]) -> str:
    """One validation problem as ``field='given': what is wrong``."""
    if problem.get("type") == "json_invalid":
        reason = problem.get("ctx", {}).get("error", "")
        return f"the body is not JSON ({reason})"
    loc = [str(part) for part in problem.get("loc", ())]
    name = ".".join(loc[1:] if loc[:1] and loc[0] in _SOURCES else loc) or "body"
    given = problem.get("input")
    shown = f"={reprlib.repr(given)}" if isinstance(given, str | int | float) else ""
    return f"{name}{shown}: {problem.get('msg', 'invalid')}"


def _error_shaped_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document, its 422s declared as :class:`ErrorBody` like every error."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if "422" in operation.get("responses", {}):
                    operation["responses"]["422"] = _UNPROCESSABLE
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        return schema

    return openapi


_UNPROCESSABLE = {
    "description": "A field of the request is missing, mistyped or out of range; the error "
    "names it.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
    500: {"model": ErrorBody, "description": "The agent could not do it."},
}
_MEANING = {
    400: "A value of the request makes no sense; the error says which and why.",
    404: "What the request names does not exist.",
    409: "The server's port is held by another process.",
    424: "There is no OpenCode binary to run.",
    502: "The Prometheus server of NEXUS_PROMETHEUS_URL did not answer.",
    507: "A file the request needs cannot be written: its file system is full.",
}


def json_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The errors of a route that answers other than JSON: still JSON bodies."""
    meaning = {**_MEANING, 401: ERRORS[401]["description"], 500: ERRORS[500]["description"]}
    schema = {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
    return {c: {"description": meaning[c], "content": {"application/json": schema}} for c in codes}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of the errors a route answers beside 401 and 500."""
    return {code: {"model": ErrorBody, "description": _MEANING[code]} for code in codes}


class StrictBody(Frozen):
    """A request body: no unknown fields, no coercion (``0`` is not ``false``), and
    nothing JSON should not carry (see :func:`unsound_value`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _sound(cls, data: Any) -> Any:
        found = unsound_value(data)
        if found is not None:
            loc, value, what = found
            problem = PydanticCustomError("unsound_json", what)
            line: InitErrorDetails = {"type": problem, "loc": loc, "input": value}
            raise ValidationError.from_exception_data(cls.__name__, [line])
        return data


_SURROGATE = re.compile("[\ud800-\udfff]")
Loc = tuple[str | int, ...]


def unsound_value(value: Any, loc: Loc = ()) -> tuple[Loc, Any, str] | None:
    """The first value in decoded JSON that nothing downstream can store or send back:
    a number out of range (``1e999999``, ``NaN``, ``Infinity``) or a lone surrogate
    (``"\\ud800"``, which is not text)."""
    if isinstance(value, float) and not math.isfinite(value):
        return loc, value, "not a finite number (a JSON number must fit a 64-bit float)"
    if isinstance(value, str) and _SURROGATE.search(value):
        return loc, value, "a lone surrogate (\\ud800-\\udfff), which is not text"
    if isinstance(value, dict):
        items: list[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return None
    for key, item in items:
        found = unsound_value(key, (*loc, str(key))) or unsound_value(item, (*loc, key))
        if found is not None:
            return found
    return None


def public_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health", tags=["probes"])
    async def health(ctx: Ctx) -> AgentHealth:
        """The agent is alive (no token needed); ``degraded`` names what went wrong with its
        own files (a database deleted, replaced or damaged, and rebuilt)."""
        return AgentHealth(
            status="degraded" if ctx.store_problems else "ok",
            version=__version__,
            uptime_seconds=time.time() - ctx.started,
            pid=os.getpid(),
            problems=ctx.store_problems[-10:],
        )

    @router.get(
        "/ready",
        tags=["probes"],
        responses={503: {"model": Readiness, "description": "Not ready."}},
    )
    async def ready(ctx: Ctx) -> Response:
        """The managed server is running and its liveness probe passes (no token needed)."""
        sup = ctx.supervisor
        body = Readiness(ready=sup.ready, state=sup.state, detail=sup.readiness_detail)
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if sup.ready else 503)

    return router


MAX_ID = 2**63 - 1  # SQLite's largest integer
BackupId = Annotated[
    str, PathParam(description="A backup's id.", pattern=f"^{BACKUP_ID_PATTERN.pattern}$")
]
UnixTime = Annotated[float | None, Query(description="Unix time, inclusive.", allow_inf_nan=False)]


def api_router() -> APIRouter:
    router = APIRouter(responses=ERRORS)

    @router.get("/metrics", tags=["metrics"], response_class=Response)
    async def metrics(ctx: Ctx) -> Response:
        """Prometheus text format."""
        return Response(ctx.exposition.render(), media_type=CONTENT_TYPE)

    @router.get(f"{API}/openapi.json", tags=["meta"], include_in_schema=False)
    async def openapi(request: Request) -> dict[str, Any]:
        schema: dict[str, Any] = request.app.openapi()
        return schema

    @router.get(f"{API}/status", tags=["server"])
    async def status(ctx: Ctx) -> ServerStatus:
        """The managed server's state, pid, version, uptime and restarts."""
        return ctx.supervisor.status()

    @router.post(f"{API}/server/start", tags=["server"], responses=responses(409, 424))
    async def start(ctx: Ctx, wait: bool = True) -> ActionResult:
        """Start the server (and clear a fatal state); waits until healthy unless wait=false."""
        return await on_supervisor(ctx, ctx.supervisor.start(wait=wait))

    @router.post(f"{API}/server/stop", tags=["server"])
    async def stop(
        ctx: Ctx,
        when_idle: Annotated[
            bool,
            Query(
                description="First wait until no session is busy (at most "
                "NEXUS_DRAIN_TIMEOUT); the answer comes once the server is stopped."
            ),
        ] = False,
        reason: Annotated[
            StopReason, Query(description="Who stops it: an operator, or a live restore.")
        ] = "operator",
    ) -> ActionResult:
        """Stop the server and keep it stopped: now, or with when_idle=true once no
        session is busy."""
        why = RestartReason(reason)
        return await on_supervisor(ctx, ctx.supervisor.stop(when_idle=when_idle, reason=why))

    @router.post(f"{API}/server/restart", tags=["server"], responses=responses(409, 424))
    async def restart(
        ctx: Ctx,
        wait: bool = True,
        when_idle: Annotated[
            bool,
            Query(
                description="Wait until no session is busy (at most NEXUS_DRAIN_TIMEOUT); "
                "a restart that has to wait answers at once, its sessions in the status."
            ),
        ] = False,
    ) -> ActionResult:
        """Restart the server: now, or with when_idle=true once no session is busy."""
        return await on_supervisor(ctx, ctx.supervisor.restart(wait=wait, when_idle=when_idle))

    @router.get(f"{API}/events", tags=["journal"])
    async def events(
        ctx: Ctx,
        since: UnixTime = None,
        until: UnixTime = None,
        kind: Annotated[list[str] | None, Query(description="Event kinds to keep.")] = None,
        after_id: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
    ) -> list[Event]:
        """Journal entries, oldest first."""
        return ctx.journal.events(
            since=since, until=until, kinds=kind or [], limit=limit, after_id=after_id
        )

    @router.get(f"{API}/logs", tags=["server"])
    async def server_logs(
        ctx: Ctx,
        lines: Annotated[int, Query(ge=1, le=10_000)] = 200,
        contains: Annotated[str | None, Query(max_length=200)] = None,
        after: Annotated[
            int | None, Query(ge=0, description="Offset of an earlier answer: lines past it.")
        ] = None,
    ) -> LogTail:
        """The tail of the server's log (or the first lines past ``after``), and its offset."""
        log = ctx.layout.server_log
        if after is None:
            chunk = await asyncio.to_thread(logs.tail_chunk, log, lines, contains)
        else:
            chunk = await asyncio.to_thread(logs.read_after, log, after, lines, contains)
        return LogTail(lines=[_redact_line(ctx, line) for line in chunk.lines], offset=chunk.offset)

    @router.get(f"{API}/metrics/query", tags=["metrics"], responses=responses(400, 502))
    def query_metrics(
        ctx: Ctx,
        metric: Annotated[
            str, Query(description=f"Metric name, e.g. {catalogue.CONNECTIONS.metric}.")
        ],
        labels: Annotated[str | None, Query(description="name=value,... to match.")] = None,
        start: Annotated[str, Query(description="Epoch s, ISO 8601, or 24h ago.")] = "1h",
        end: Annotated[str, Query(description="Epoch s, ISO 8601, or now.")] = "now",
        max_points: Annotated[int, Query(ge=2, le=100_000)] = 2000,
        resolution: Annotated[str, Query(description="auto, raw, 1m or 1h.")] = "auto",
        method: Annotated[str, Query(description="minmax, lttb or none.")] = "minmax",
        agg: Annotated[str, Query(description="mean, min, max, sum or count.")] = "mean",
        since: Annotated[float | None, Query(description=SINCE_TEXT)] = None,
    ) -> dict[str, Any]:
        """Metric history from metrics.db or Prometheus (NEXUS_METRICS_BACKEND): one entry
        per series (times, values)."""
        assert ctx.metrics is not None
        return ctx.metrics.query(
            metric, labels, start, end, max_points, resolution, method, agg, since
        )

    @router.post(f"{API}/metrics/queries", tags=["metrics"], responses=responses(400, 502))
    def query_many_metrics(ctx: Ctx, body: MetricQueries) -> dict[str, Any]:
        """Several metric queries in one request (a console's whole tab): their answers,
        in order, as ``/metrics/query`` gives them. Reads only; nothing changes."""
        assert ctx.metrics is not None
        metrics = ctx.metrics
        return {"results": [metrics.query(**q.model_dump()) for q in body.queries]}

    @router.get(f"{API}/metrics/names", tags=["metrics"], responses=responses(502))
    def metric_names(ctx: Ctx) -> list[str]:
        """Names of the metrics the metrics backend (metrics.db or Prometheus) holds."""
        assert ctx.metrics is not None
        return ctx.metrics.names()

    @router.get(f"{API}/usage", tags=["metrics"])
    def usage(
        ctx: Ctx,
        sessions: Annotated[
            int, Query(ge=0, le=1000, description="Busiest sessions to list.")
        ] = 10,
    ) -> dict[str, Any]:
        """The models' usage through the server: totals per provider and model (tokens
        by kind, cost, assistant messages, provider errors), tool calls, prompts in
        flight, tokens per day (UTC) and model, and the busiest sessions by tokens."""
        assert ctx.metrics is not None
        return ctx.metrics.usage_summary(sessions)

    @router.get(f"{API}/metrics/store", tags=["metrics"])
    def metrics_store(ctx: Ctx) -> dict[str, Any]:
        """Size of metrics.db on disk, its samples, and each tier's retention."""
        assert ctx.metrics is not None
        return ctx.metrics.store_info()

    @router.get(f"{API}/config", tags=["meta"])
    async def config(ctx: Ctx) -> ConfigView:
        """The active profile and every setting, secrets masked."""
        rows = [
            SettingRow(variable=v, value=val, description=d)
            for v, val, d in settings_table(ctx.settings)
        ]
        return ConfigView(profile=ctx.settings.env, settings=rows)

    @router.get(f"{API}/alerts", tags=["alerts"])
    async def alerts(ctx: Ctx) -> AlertsView:
        """Every alert rule with its state, the webhooks' delivery status (URLs masked),
        and the latest notifications."""
        assert ctx.alerts is not None
        return ctx.alerts.view()

    return router


SINCE_TEXT = "Epoch s: only what is new after it (a refresh that appends)."


class MetricQueryBody(StrictBody):
    metric: str = Field(
        min_length=1, description=f"Metric name, e.g. {catalogue.CONNECTIONS.metric}."
    )
    labels: str | None = Field(default=None, description="name=value,... to match.")
    start: str | float = Field(default="1h", description="Epoch s, ISO 8601, or 24h ago.")
    end: str | float = Field(default="now", description="Epoch s, ISO 8601, or now.")
    max_points: int = Field(default=2000, ge=2, le=100_000)
    resolution: str = Field(default="auto", description="auto, raw, 1m or 1h.")
    method: str = Field(default="minmax", description="minmax, lttb or none.")
    agg: str = Field(default="mean", description="mean, min, max, sum or count.")
    since: float | None = Field(default=None, description=SINCE_TEXT)

    @field_validator("max_points", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        """JSON's integers include 600.0 (as its schema says); no other coercion."""
        return int(value) if isinstance(value, float) and value.is_integer() else value


class MetricQueries(StrictBody):
    queries: list[MetricQueryBody] = Field(max_length=100)


class BackupRequest(StrictBody):
    include_nexus: bool | None = None


class RestoreRequest(StrictBody):
    parts: list[str] | None = None
    to_folder: str | None = None


class RunRequest(StrictBody):
    parameters: dict[str, Any] = Field(default_factory=dict)
    who: str | None = None


class BackupSchedule(Frozen):
    schedule: str
    next_run: float | None = None
    last_success: float | None = None
    last_size: int | None = None
    last_duration: float | None = None
    backups: int = 0


# A run's HTML page may show its own styles and inline images, and do nothing else.
REPORT_POLICY = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def recovery_router() -> APIRouter:
    """Backups (``/api/v1/backups``), runbooks and their runs (``/api/v1/runbooks``, ``/runs``).

    Slow work (creating, verifying, restoring) runs in FastAPI's thread pool; a
    runbook run starts in its own thread and is read back from ``/api/v1/runs/{id}``.
    """
    router = APIRouter(responses={**ERRORS, **responses(400, 404)})

    def backups(ctx: AgentContext) -> BackupService:
        assert ctx.backups is not None
        return ctx.backups

    def runbooks(ctx: AgentContext) -> RunbookService:
        assert ctx.runbooks is not None
        return ctx.runbooks

    @router.get(f"{API}/backups", tags=["backups"])
    def list_backups(ctx: Ctx) -> list[BackupInfo]:
        """Complete backups, newest first."""
        return backups(ctx).backups()

    @router.post(f"{API}/backups", tags=["backups"])
    def create_backup(ctx: Ctx, body: BackupRequest | None = None) -> Manifest:
        """Back up now (waits until the backup is written)."""
        include = body.include_nexus if body else None
        return backups(ctx).create(trigger="api", include_nexus=include)

    @router.get(f"{API}/backups/schedule", tags=["backups"])
    def backup_schedule(ctx: Ctx) -> BackupSchedule:
        """The schedule, its next run, and the last successful backup."""
        service = backups(ctx)
        last = service.last_success()
        scheduler = service.scheduler
        nxt = scheduler.next_at.timestamp() if scheduler and scheduler.next_at else None
        return BackupSchedule(
            schedule=ctx.settings.backup_schedule,
            next_run=nxt,
            last_success=last.finished if last else None,
            last_size=last.size if last else None,
            last_duration=last.duration if last else None,
            backups=len(service.backups()),
        )

    @router.post(f"{API}/backups/prune", tags=["backups"])
    def prune_backups(ctx: Ctx, dry_run: bool = True) -> PruneReport:
        """Apply the retention policy (a dry run unless dry_run=false)."""
        return backups(ctx).prune(dry_run=dry_run, trigger="api")

    @router.get(f"{API}/backups/{{backup_id}}", tags=["backups"])
    def get_backup(ctx: Ctx, backup_id: BackupId) -> Manifest:
        """A backup's manifest: every file with its size and sha256."""
        return backups(ctx).get(backup_id)

    @router.post(f"{API}/backups/{{backup_id}}/verify", tags=["backups"])
    def verify_backup(ctx: Ctx, backup_id: BackupId) -> VerifyReport:
        """Checksums of the archive and every member, and integrity_check of each database."""
        return backups(ctx).verify(backup_id, trigger="api")

    @router.post(f"{API}/backups/{{backup_id}}/restore", tags=["backups"])
    def restore_backup(ctx: Ctx, backup_id: BackupId, body: RestoreRequest) -> RestoreReport:
        """Restore into a folder, or over the live folders (the server is stopped, the
        replaced data kept in a pre-restore backup; rolled back if anything fails)."""
        service = backups(ctx)
        if body.to_folder:
            return service.restore_to_folder(backup_id, Path(body.to_folder), body.parts, "api")
        return service.restore_live(backup_id, supervisor_control(ctx), body.parts, trigger="api")

    @router.get(f"{API}/runbooks", tags=["runbooks"])
    def list_runbooks(ctx: Ctx) -> list[Runbook]:
        """The runbooks, with their purpose and typed parameters."""
        return runbooks(ctx).runbooks()

    @router.get(f"{API}/runbooks/{{name}}", tags=["runbooks"])
    def get_runbook(ctx: Ctx, name: str) -> Runbook:
        return runbooks(ctx).get(name)

    @router.post(
        f"{API}/runbooks/{{name}}/runs",
        tags=["runbooks"],
        status_code=202,
        responses=responses(507),
    )
    def start_run(ctx: Ctx, name: str, body: RunRequest) -> RunRecord:
        """Check the parameters, then run in the background; read it back from /runs/{id}."""
        who = f"api:{body.who}" if body.who else "api"
        return runbooks(ctx).start(name, dict(body.parameters), who)

    @router.get(f"{API}/runs", tags=["runbooks"])
    def list_runs(
        ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 50, runbook: str | None = None
    ) -> list[RunRecord]:
        """Recent runs, newest first: who, when, parameters, status, verdict."""
        return runbooks(ctx).runs(limit, runbook)

    @router.get(f"{API}/runs/{{run_id}}", tags=["runbooks"])
    def get_run(ctx: Ctx, run_id: str) -> RunRecord:
        """One run; ``cells_done`` of ``cells_total`` while it runs."""
        return runbooks(ctx).run(run_id)

    @router.get(f"{API}/runs/{{run_id}}/notebook", tags=["runbooks"])
    def run_notebook(ctx: Ctx, run_id: str) -> FileResponse:
        """The executed notebook: the audit record of the run."""
        path = runbooks(ctx).notebook(run_id)
        return FileResponse(path, media_type="application/x-ipynb+json", filename=path.name)

    @router.get(
        f"{API}/runs/{{run_id}}/html",
        tags=["runbooks"],
        response_class=HTMLResponse,
        responses=json_errors(401, 404, 500),
    )
    def run_html(ctx: Ctx, run_id: str) -> HTMLResponse:
        """The executed notebook as one HTML page: sanitised, secrets masked, no scripts."""
        html = runbooks(ctx).notebook_html(run_id)
        return HTMLResponse(html, headers={"Content-Security-Policy": REPORT_POLICY})

    return router


class UpgradeRequest(StrictBody):
    version: str | None = Field(
        default=None, description="Exact version; default: the newest on the npm registry."
    )
    dry_run: bool = Field(default=False, description="Only show the plan; change nothing.")
    probation_minutes: float | None = Field(
        default=None, ge=0, le=1440, description="Default: NEXUS_UPGRADE_PROBATION."
    )


class UpgradeAnswer(Frozen):
    plan: dict[str, Any]
    operation: OperationRecord | None = Field(
        None, description="The upgrade begun (none for a dry run); follow it with GET."
    )


class UpgradeStatus(Frozen):
    operation: OperationRecord | None = Field(None, description="The current or last one.")
    upgrades: dict[str, int] = Field(description="Upgrades by outcome.")
    rollbacks: int


def upgrade_router() -> APIRouter:
    """Upgrades and rollbacks of OpenCode (``/api/v1/opencode/upgrade``, ``/rollback``)."""
    router = APIRouter(responses={**ERRORS, **responses(400, 409)})

    def service(ctx: AgentContext) -> UpgradeService:
        if ctx.upgrades is None:
            raise AgentError(
                "this agent does not supervise a server: nothing to upgrade",
                hint="run the agent that manages the server (`nexus-ops agent start`)",
                status=409,
            )
        return ctx.upgrades

    @router.get(f"{API}/opencode/upgrade", tags=["opencode"])
    def upgrade_status(ctx: Ctx) -> UpgradeStatus:
        """The current or last upgrade or rollback: its steps with times, and its outcome."""
        upgrades = service(ctx)
        by_outcome, rollbacks = upgrades.counts()
        return UpgradeStatus(operation=upgrades.status(), upgrades=by_outcome, rollbacks=rollbacks)

    @router.post(f"{API}/opencode/upgrade", tags=["opencode"], status_code=202)
    def upgrade(ctx: Ctx, body: UpgradeRequest) -> UpgradeAnswer:
        """Upgrade OpenCode behind the health gate and probation (rolled back if either
        fails); answers once it has begun. A dry run answers the plan only."""
        upgrades = service(ctx)
        if body.dry_run:
            return UpgradeAnswer(plan=upgrades.plan(body.version, body.probation_minutes).as_json())
        record, plan = upgrades.begin(body.version, body.probation_minutes, trigger="api")
        worker = threading.Thread(
            target=_run_logged, args=(upgrades, plan), name="nexus-upgrade", daemon=True
        )
        worker.start()
        return UpgradeAnswer(plan=plan.as_json(), operation=record)

    @router.post(f"{API}/opencode/rollback", tags=["opencode"])
    def rollback(ctx: Ctx) -> OperationRecord:
        """Roll the last upgrade back: its database moved aside, the pre-upgrade backup
        restored, the previous version started (waits until done)."""
        return service(ctx).rollback(trigger="api")

    return router


def _run_logged(upgrades: UpgradeService, plan: Any) -> None:
    try:
        upgrades.run(plan)
    except Exception:
        log.exception("the upgrade failed unexpectedly")


async def settle_upgrade(ctx: AgentContext) -> None:
    if ctx.upgrades is not None:
        try:
            await asyncio.to_thread(ctx.upgrades.settle)
        except NexusOpsError as exc:
            log.error("settling an interrupted upgrade failed: %s", exc)


def _caller(ctx: AgentContext) -> Callable[[Coroutine[Any, Any, ActionResult]], ActionResult]:
    """Run a supervisor action on its loop from a thread; wait for its result."""
    loop = ctx.supervisor_loop
    assert loop is not None

    def call(coro: Coroutine[Any, Any, ActionResult]) -> ActionResult:
        limit = 300 + ctx.settings.drain_timeout  # a stop first waits for busy sessions
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=limit)

    return call


def _wait_ready(ctx: AgentContext, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ctx.supervisor.ready:
            return
        time.sleep(0.2)
    raise OpenCodeUnavailable(f"the server was not healthy within {timeout:g} s")


def supervisor_control(ctx: AgentContext) -> CallbackControl:
    """The ServerControl of a restore run by the agent: its own supervisor, from a thread."""
    call = _caller(ctx)

    def stop() -> None:
        result = call(ctx.supervisor.stop(when_idle=True, reason=RestartReason.RESTORE))
        if not result.ok:
            raise NexusOpsError(f"the server did not stop: {result.message}")

    def start() -> None:
        call(ctx.supervisor.start(wait=False))

    return CallbackControl(stop=stop, start=start, wait_healthy=lambda t: _wait_ready(ctx, t))


@dataclass
class SupervisorUpgradeControl:
    """The UpgradeControl of an upgrade run by the agent: its supervisor, from a thread."""

    ctx: AgentContext

    def stop(self, drain: bool) -> None:
        sup = self.ctx.supervisor
        result = _caller(self.ctx)(sup.stop(when_idle=drain, reason=RestartReason.UPGRADE))
        if not result.ok:
            raise NexusOpsError(f"the server did not stop: {result.message}")

    def start(self) -> None:
        _caller(self.ctx)(self.ctx.supervisor.start(wait=False))

    def wait_healthy(self, timeout: float) -> None:
        _wait_ready(self.ctx, timeout)

    def status(self) -> ServerStatus:
        return self.ctx.supervisor.status()


def _redact_line(ctx: AgentContext, line: str) -> str:
    return redact(line, secrets=[ctx.token, ctx.supervisor.credentials.password])


def check_bind(
    settings: Settings,
    token: str | None = None,
    host: str | None = None,
    variable: str = "NEXUS_AGENT_HOST",
) -> None:
    """Refuse a non-loopback address unless the operator allowed remote access, and then
    insist on a strong token (the agent's, or the console's with ``host``/``variable``)."""
    host = settings.agent_host if host is None else host
    if is_loopback(host):
        return
    if not settings.allow_remote:
        raise SecurityError(
            f"{variable}={host} is not a loopback address",
            hint="set NEXUS_ALLOW_REMOTE=true to accept remote connections (the bearer token "
            "is always required), and put TLS in front of it",
        )
    if token is not None:
        require_strong_token(token, "the agent token ($NEXUS_HOME/secrets/agent.token)")


STORE_CHECK_INTERVAL = 5.0  # seconds between checks that the databases are still the files


def stores(ctx: AgentContext) -> list[Database]:
    """The agent's databases: nexus.db, and metrics.db when sampling."""
    return [ctx.database] + ([ctx.metrics.store.db] if ctx.metrics else [])


async def watch_stores(ctx: AgentContext, interval: float = STORE_CHECK_INTERVAL) -> None:
    """Notice a database deleted or replaced under the agent, and rebuild it at once (the
    history would otherwise go with the old file when the agent stops)."""
    while True:
        await asyncio.sleep(interval)
        for store in stores(ctx):
            problem = await asyncio.to_thread(store.check_identity)
            if problem is not None:
                report_store_problem(ctx, store, problem)


def report_store_problem(ctx: AgentContext, store: Database, problem: str) -> None:
    """Say it loudly: the log (ERROR), the journal, /metrics and /health."""
    log.error("%s", problem)
    ctx.store_problems.append(problem)
    ctx.exposition.count_store_problem(store.path.name)
    ctx.journal.record(EventKind.STORE_PROBLEM, message=problem)


async def evaluate_alerts(ctx: AgentContext) -> None:
    """The alert evaluator, on the sampler's readings and the supervisor's requests.

    It runs on an event loop of its own in a thread of its own: however many rules
    fire and however slow the webhooks are, its evaluations and deliveries never
    wait in line before the supervisor's probes or the API's answers.
    """
    alerts = ctx.alerts
    assert alerts is not None
    metrics = ctx.metrics
    await in_own_loop(
        lambda: alerts.run(
            lambda: with_upgrade_counts(ctx, metrics.sampler.latest if metrics else None),
            ctx.supervisor.request_observers,
        ),
        "nexus-alerts",
    )


@dataclass(frozen=True)
class _Reading:
    time: float
    values: list[tuple[str, Mapping[str, str], float]]


def with_upgrade_counts(ctx: AgentContext, reading: ReadingLike | None) -> ReadingLike | None:
    """The sampler's reading and the upgrade counters beside it (for the rollback rule)."""
    if reading is None or ctx.upgrades is None:
        return reading
    return _Reading(reading.time, [*reading.values, *count_values(ctx.upgrades.counts)])


async def supervise(ctx: AgentContext) -> None:
    """The supervisor's probes, restarts and actions, on an event loop and a thread of
    their own: a main loop busy with the API or the sampler never delays a probe or a
    restart. The API hands its actions over with :func:`on_supervisor`."""
    supervisor = ctx.supervisor

    async def run() -> None:
        try:
            await supervisor.run()
        finally:
            await supervisor.shutdown()  # on its own loop: the pidfd reader and the client

    await in_own_loop(run, "nexus-supervisor", ctx.supervisor_loop)


async def on_supervisor(ctx: AgentContext, action: Coroutine[Any, Any, T]) -> T:
    """Run one of the supervisor's coroutines on the supervisor's loop; wait for it here."""
    loop = ctx.supervisor_loop
    if loop is None or loop is asyncio.get_running_loop():
        return await action
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(action, loop))


async def in_own_loop(
    make: Callable[[], Coroutine[Any, Any, None]],
    name: str,
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Run ``make()`` on a new event loop (or ``loop``, not running yet) in a new thread
    until it ends, or until this coroutine is cancelled: then it is cancelled too, and
    waited for."""
    loop = loop or asyncio.new_event_loop()
    task = loop.create_task(make())

    def body() -> None:
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("%s stopped", name)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    worker = threading.Thread(target=body, name=name, daemon=True)
    worker.start()
    try:
        await asyncio.to_thread(worker.join)
    finally:
        if worker.is_alive():
            loop.call_soon_threadsafe(task.cancel)
            await asyncio.shield(asyncio.to_thread(worker.join))


class AgentServer(uvicorn.Server):
    """uvicorn's server, ticking once a second instead of ten times: its tick only
    refreshes the ``Date`` header (once a second anyway) and looks whether to exit,
    and ten wakeups a second were a tenth of an idle agent's CPU. A signal to exit
    wakes the tick at once, so stopping takes no longer than before."""

    TICK = 1.0

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    async def main_loop(self) -> None:
        wake = asyncio.Event()
        self._wake = (asyncio.get_running_loop(), wake)
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + round(self.TICK * 10)) % 864000  # on_tick counts tenths
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.TICK):  # no task a tick, as wait_for makes
                    await wake.wait()
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._wake is not None:
            loop, wake = self._wake
            loop.call_soon_threadsafe(wake.set)


# What `nexus-ops agent` runs beside the supervisor and the sampler.
DEFAULT_JOBS: list[BackgroundJob] = [evaluate_alerts]


def serve(settings: Settings, jobs: list[BackgroundJob] | None = None) -> None:
    """Run the agent in the foreground until SIGINT or SIGTERM (the server keeps running).

    ``jobs`` default to :data:`DEFAULT_JOBS` (the alert evaluator).
    """
    layout = Layout(settings.home).ensure()
    check_bind(settings, read_or_create_secret(layout.agent_token_file))
    load_config(settings)  # a bad alerts file stops the agent here, with what to fix
    jobs = DEFAULT_JOBS if jobs is None else jobs
    check_port_free(settings.agent_host, settings.agent_port, "NEXUS_AGENT_PORT")
    if settings.entry:  # a bad NEXUS_ENTRY_* setting stops the agent here, with what to fix
        check_entry(settings)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    save_record(layout.agent_pidfile, identify(os.getpid()))
    try:
        config = uvicorn.Config(
            create_app(settings, jobs),
            host=settings.agent_host,
            port=settings.agent_port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            # No websocket routes: an upgrade request (a websocket's forward_auth check
            # through a proxy) is answered as the plain HTTP request it also is.
            ws="none",
        )
        AgentServer(config).run()
    finally:
        remove_record(layout.agent_pidfile)


# ---- the HTTPS entry: device sessions and pairing --------------------------------------

ENTRY_PATHS = ("/entry/check", "/_nexus/")
LOGIN_HINT = "pair this device: open /_nexus/pair and type a code from `nexus-ops pair`"
MAX_FORM = 4096  # bytes of a pairing form


def is_entry_path(path: str) -> bool:
    """The paths the entry reaches (with its devices' Host), without the agent's token."""
    return path == ENTRY_PATHS[0] or path.startswith(ENTRY_PATHS[1])


def client_address(request: Request) -> str:
    """The device's address: the entry's X-Forwarded-For (trusted from loopback only)."""
    peer = request.client.host if request.client else ""
    forwarded = request.headers.get("x-forwarded-for", "")
    if forwarded and is_loopback(peer):
        return forwarded.split(",")[-1].strip()[:64]  # the entry's own, rightmost entry
    return peer


def devices(ctx: AgentContext) -> DeviceSessions:
    assert ctx.devices is not None
    return ctx.devices


def page(html: str, status: int = 200, headers: Mapping[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(html, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form (code, name, next): the first value of each field."""
    body = await request.body()
    if len(body) > MAX_FORM:
        return {}
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    except ValueError:  # more fields than a pairing form has
        return {}
    return {key: values[0] for key, values in fields.items() if values}


PAIR_FORM = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "The pairing code, XXXX-XXXX."},
                    "name": {"type": "string", "description": "A name for this device."},
                    "next": {"type": "string", "description": "Where to go once paired."},
                },
                "required": ["code"],
            }
        }
    },
}


def entry_router() -> APIRouter:
    """What the entry (Caddy) asks, without the agent's token: ``/entry/check`` (its
    forward_auth) and the pairing pages under ``/_nexus/``."""
    router = APIRouter(tags=["entry"])

    @router.get(
        "/entry/check",
        responses={
            401: {"model": ErrorBody, "description": "No live device session."},
            302: {"description": "No live device session (a page): to the pairing page."},
        },
    )
    async def entry_check(request: Request, ctx: Ctx) -> Response:
        """A live device session (the ``nexus_device`` cookie): 200 with the device and the
        server's Authorization, which the entry copies onto the upstream request only."""
        device = devices(ctx).check(request.cookies.get(COOKIE), client_address(request))
        if device is not None:
            username, password = (
                ctx.supervisor.credentials.username,
                ctx.supervisor.credentials.password,
            )
            basic = base64.b64encode(f"{username}:{password}".encode()).decode()
            headers = {"X-Nexus-Device": device.id, "Authorization": f"Basic {basic}"}
            return Response(status_code=200, headers={**headers, "Cache-Control": "no-store"})
        if "text/html" in request.headers.get("accept", ""):
            target = safe_next(request.headers.get("x-forwarded-uri"))
            location = f"/_nexus/pair?next={quote(target, safe='')}"
            return Response(status_code=302, headers={"Location": location})
        body = ErrorBody(error="no live device session on this request", hint=LOGIN_HINT)
        return JSONResponse(body.model_dump(), status_code=401)

    @router.get("/_nexus/pair", response_class=HTMLResponse)
    def pair_form(code: str = "", next: str = "/") -> HTMLResponse:
        """The pairing form; a code from the link fills it in."""
        return page(pair_page(code=code[:20], next_path=safe_next(next)))

    @router.post(
        "/_nexus/pair",
        response_class=HTMLResponse,
        status_code=303,
        openapi_extra={"requestBody": PAIR_FORM},
        responses={
            400: {"description": "The code is wrong, used or expired: the form, with why."},
            429: {"description": "Too many wrong codes: the form, with Retry-After."},
        },
    )
    async def pair(request: Request, ctx: Ctx) -> Response:
        """Spend a code (form fields code, name, next): 303 to next with the session cookie."""
        form = await read_form(request)
        code, target = form.get("code", ""), safe_next(form.get("next"))
        agent = request.headers.get("user-agent", "")
        try:
            device, token = await asyncio.to_thread(
                devices(ctx).pair, code, form.get("name"), client_address(request), agent
            )
        except PairingRefused as exc:
            retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
            html = pair_page(code="", next_path=target, message=exc.message, hint=exc.hint or "")
            return page(html, exc.status, retry)
        cookie = session_cookie(token, devices(ctx).max_age)
        headers = {"Location": target, "Set-Cookie": cookie, "X-Nexus-Device": device.id}
        return Response(status_code=303, headers={**PAGE_HEADERS, **headers})

    @router.post("/_nexus/logout", response_class=HTMLResponse)
    def logout(request: Request, ctx: Ctx) -> HTMLResponse:
        """End this device's session (its cookie is revoked and cleared)."""
        devices(ctx).logout(request.cookies.get(COOKIE))
        return page(logged_out_page(), headers={"Set-Cookie": session_cookie("", 0)})

    return router


class PairingRequest(StrictBody):
    name: str | None = Field(
        default=None, max_length=60, description="Name of the device to pair (else its own)."
    )


class RevokedDevices(Frozen):
    revoked: list[str]


DeviceId = Annotated[str, PathParam(description="A device's id.", pattern="^[0-9a-f]{1,32}$")]


def devices_router() -> APIRouter:
    """Pairing codes and device sessions, for the operator (with the agent's token)."""
    router = APIRouter(tags=["devices"], responses=ERRORS)

    @router.post(f"{API}/pairings", status_code=201, responses=responses(400))
    def create_pairing(ctx: Ctx, body: PairingRequest | None = None) -> PairingCode:
        """A one-time pairing code, its link (for a QR code) and when it expires."""
        return devices(ctx).create_code(body.name if body else None)

    @router.get(f"{API}/devices")
    def list_devices(ctx: Ctx) -> list[Device]:
        """Paired devices whose session is live, newest first."""
        return devices(ctx).devices()

    @router.delete(f"{API}/devices")
    def revoke_all_devices(ctx: Ctx) -> RevokedDevices:
        """End every device's session at once."""
        return RevokedDevices(revoked=devices(ctx).revoke_all())

    @router.delete(f"{API}/devices/{{device_id}}", responses=responses(404))
    def revoke_device(ctx: Ctx, device_id: DeviceId) -> Device:
        """End one device's session at once (its next request through the entry fails)."""
        return devices(ctx).revoke(device_id)

    return router
