"""The agent: one per host; owns the OpenCode server and serves its HTTP API.

``GET /health`` (the agent is alive) and ``GET /ready`` (the server is running
and answering) need no token; everything else needs ``Authorization: Bearer
<token>`` with the token of ``$NEXUS_HOME/secrets/agent.token``. State changes
are POSTs. The OpenAPI document is at ``/api/v1/openapi.json``.

>>> # app = create_app(load_settings()); uvicorn.run(app)  (or `nexus-ops agent`)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from nexus_ops import __version__, logs
from nexus_ops.alerts import AlertService, AlertsView, load_config
from nexus_ops.backup import BackupService, CallbackControl
from nexus_ops.backup.models import BackupInfo, Manifest, PruneReport, RestoreReport, VerifyReport
from nexus_ops.config import Settings, settings_table
from nexus_ops.errors import (
    BinaryNotFound,
    NexusOpsError,
    OpenCodeUnavailable,
    ParameterError,
    PortInUse,
    SecurityError,
    Unauthorized,
    UnsafeArchive,
)
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
    ServerStatus,
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
from nexus_ops.store.runs import RunRecord
from nexus_ops.supervisor import Supervisor

log = logging.getLogger(__name__)
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
    loop: asyncio.AbstractEventLoop | None = None


class LogTail(Frozen):
    lines: list[str]


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
        database = Database(layout.database)
        journal = Journal(database)
        supervisor = Supervisor(settings, journal)
        exposition = Exposition(supervisor.status, lambda: supervisor.counters, __version__)
        supervisor.request_observers.append(exposition.observe_request)
        ctx = AgentContext(settings, layout, token, database, journal, supervisor, exposition)
        ctx.metrics = MetricsService(settings, supervisor)
        exposition.registry.register(ctx.metrics.collector())
        ctx.alerts = AlertService.from_settings(settings, journal)
        ctx.backups = BackupService(settings, database, journal)
        exposition.registry.register(ctx.backups.collector())
        ctx.runbooks = RunbookService(settings, database)
        ctx.loop = asyncio.get_running_loop()
        app.state.ctx = ctx
        journal.record(EventKind.AGENT_START, pid=os.getpid(), message=f"agent {__version__}")
        # Before the supervisor applies the desired state: a restore killed half-way
        # is rolled back or finished, and the desired state it changed is put back.
        await asyncio.to_thread(ctx.backups.settle_interrupted_restore)
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(job(ctx)) for job in jobs or []]
        tasks.append(asyncio.create_task(ctx.metrics.run()))
        tasks.append(asyncio.create_task(ctx.backups.run_schedule()))
        if manage:
            tasks.append(asyncio.create_task(supervisor.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await supervisor.shutdown()
            await asyncio.to_thread(ctx.metrics.close)
            journal.record(EventKind.AGENT_STOP, pid=os.getpid(), message="agent stopped")
            database.close()

    app = FastAPI(
        title="nexus-ops agent",
        version=__version__,
        description="Supervises an OpenCode server: status, control, events, metrics.",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(NexusOpsError, _nexus_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.middleware("http")(_allow_every_method)
    app.middleware("http")(host_guard(settings))
    app.include_router(public_router())
    app.include_router(api_router(), dependencies=[Depends(require_token)])
    app.include_router(recovery_router(), dependencies=[Depends(require_token)])
    return app


Middleware = Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]


def host_guard(settings: Settings) -> Middleware:
    """Refuse (403) a request whose ``Host`` is not a name of the agent: a page of another
    site that rebinds its DNS name to 127.0.0.1 must not read even ``/health``."""
    bind = settings.agent_host
    allowed = allowed_hosts(bind, settings.extra_hosts)

    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        header = request.headers.get("host")
        if host_allowed(header, bind, allowed):
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


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
    500: {"model": ErrorBody, "description": "The agent could not do it."},
}
_MEANING = {
    400: "A value of the request makes no sense; the error says which and why.",
    404: "What the request names does not exist.",
    409: "The server's port is held by another process.",
    424: "There is no OpenCode binary to run.",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of the errors a route answers beside 401 and 500."""
    return {code: {"model": ErrorBody, "description": _MEANING[code]} for code in codes}


class StrictBody(Frozen):
    """A request body: no unknown fields, and no coercion (``0`` is not ``false``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


def public_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health", tags=["probes"])
    async def health(ctx: Ctx) -> AgentHealth:
        """The agent is alive (no token needed)."""
        return AgentHealth(
            version=__version__, uptime_seconds=time.time() - ctx.started, pid=os.getpid()
        )

    @router.get(
        "/ready",
        tags=["probes"],
        responses={503: {"model": Readiness, "description": "Not ready."}},
    )
    async def ready(ctx: Ctx) -> Response:
        """The managed server is running and its liveness probe passes (no token needed)."""
        sup = ctx.supervisor
        body = Readiness(ready=sup.ready, state=sup.state, detail=sup.status().last_error or "")
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if sup.ready else 503)

    return router


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
        return await ctx.supervisor.start(wait=wait)

    @router.post(f"{API}/server/stop", tags=["server"])
    async def stop(ctx: Ctx) -> ActionResult:
        """Stop the server and keep it stopped."""
        return await ctx.supervisor.stop()

    @router.post(f"{API}/server/restart", tags=["server"], responses=responses(409, 424))
    async def restart(ctx: Ctx, wait: bool = True) -> ActionResult:
        """Restart the server now."""
        return await ctx.supervisor.restart(wait=wait)

    @router.get(f"{API}/events", tags=["journal"])
    async def events(
        ctx: Ctx,
        since: Annotated[float | None, Query(description="Unix time, inclusive.")] = None,
        until: Annotated[float | None, Query(description="Unix time, inclusive.")] = None,
        kind: Annotated[list[str] | None, Query(description="Event kinds to keep.")] = None,
        after_id: Annotated[int | None, Query(ge=0)] = None,
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
    ) -> LogTail:
        """The tail of the server's log, optionally only lines containing a text."""
        tail = await asyncio.to_thread(logs.tail, ctx.layout.server_log, lines, contains)
        return LogTail(lines=[_redact_line(ctx, line) for line in tail])

    @router.get(f"{API}/metrics/query", tags=["metrics"], responses=responses(400))
    def query_metrics(
        ctx: Ctx,
        metric: Annotated[str, Query(description="Metric name, e.g. opencode_connections.")],
        labels: Annotated[str | None, Query(description="name=value,... to match.")] = None,
        start: Annotated[str, Query(description="Epoch s, ISO 8601, or 24h ago.")] = "1h",
        end: Annotated[str, Query(description="Epoch s, ISO 8601, or now.")] = "now",
        max_points: Annotated[int, Query(ge=2, le=100_000)] = 2000,
        resolution: Annotated[str, Query(description="auto, raw, 1m or 1h.")] = "auto",
        method: Annotated[str, Query(description="minmax, lttb or none.")] = "minmax",
        agg: Annotated[str, Query(description="mean, min, max, sum or count.")] = "mean",
    ) -> dict[str, Any]:
        """Metric history from metrics.db: one entry per series (times, values)."""
        assert ctx.metrics is not None
        return ctx.metrics.query(metric, labels, start, end, max_points, resolution, method, agg)

    @router.get(f"{API}/metrics/names", tags=["metrics"])
    def metric_names(ctx: Ctx) -> list[str]:
        """Names of the metrics metrics.db holds."""
        assert ctx.metrics is not None
        return ctx.metrics.names()

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
    def get_backup(ctx: Ctx, backup_id: str) -> Manifest:
        """A backup's manifest: every file with its size and sha256."""
        return backups(ctx).get(backup_id)

    @router.post(f"{API}/backups/{{backup_id}}/verify", tags=["backups"])
    def verify_backup(ctx: Ctx, backup_id: str) -> VerifyReport:
        """Checksums of the archive and every member, and integrity_check of each database."""
        return backups(ctx).verify(backup_id, trigger="api")

    @router.post(f"{API}/backups/{{backup_id}}/restore", tags=["backups"])
    def restore_backup(ctx: Ctx, backup_id: str, body: RestoreRequest) -> RestoreReport:
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

    @router.post(f"{API}/runbooks/{{name}}/runs", tags=["runbooks"], status_code=202)
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

    return router


def supervisor_control(ctx: AgentContext) -> CallbackControl:
    """The ServerControl of a restore run by the agent: its own supervisor, from a thread."""
    loop = ctx.loop
    assert loop is not None

    def call(coro: Coroutine[Any, Any, ActionResult]) -> ActionResult:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=300)

    def stop() -> None:
        result = call(ctx.supervisor.stop())
        if not result.ok:
            raise NexusOpsError(f"the server did not stop: {result.message}")

    def start() -> None:
        call(ctx.supervisor.start(wait=False))

    def wait_healthy(timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ctx.supervisor.ready:
                return
            time.sleep(0.2)
        raise OpenCodeUnavailable(f"the server was not healthy within {timeout:g} s")

    return CallbackControl(stop=stop, start=start, wait_healthy=wait_healthy)


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


async def evaluate_alerts(ctx: AgentContext) -> None:
    """The alert evaluator, on the sampler's readings and the supervisor's requests."""
    assert ctx.alerts is not None
    metrics = ctx.metrics
    await ctx.alerts.run(
        lambda: metrics.sampler.latest if metrics else None, ctx.supervisor.request_observers
    )


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
    check_port_free(settings.agent_host, settings.agent_port)
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
        )
        uvicorn.Server(config).run()
    finally:
        remove_record(layout.agent_pidfile)
