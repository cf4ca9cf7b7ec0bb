"""``nexus-ops console``: the agent if none runs, then Voila on the console notebook.

Voila runs as :mod:`nexus_ops.console_voila` (Voila with a Host guard and masked logs).

Voila runs in ``$NEXUS_HOME/console/`` (0700), which holds a copy of
``console.ipynb``, the plotly widget bundle that every figure of the page shares
(:mod:`nexus_ops.ui.figurewidget`) and ``voila.json``, the configuration (0600,
so that the token is not on a command line other users can read):

- the page is locked by a token: the given one, or the one kept in
  ``$NEXUS_HOME/secrets/console.token`` (generated 0600 the first time);
- a loopback address unless remote access is allowed (``NEXUS_ALLOW_REMOTE`` or
  ``--allow-remote``), and then only with a strong token;
- pre-heated kernels: a kernel has already run the notebook when a page asks for
  it, so the page arrives complete (progressive rendering, the alternative Voila
  offers and that cannot be combined with it, only helps notebooks of many cells);
- kernels of closed pages are culled after ``NEXUS_CONSOLE_CULL_TIMEOUT`` seconds
  of idleness; the pre-heated kernel waiting for the next visit never is.

It runs in the foreground until Ctrl-C or SIGTERM, which stop Voila and its
kernels; the agent and the server keep running.

The console is served under ``/console/`` (Voila's ``base_url``), the same path
directly on its port and through the HTTPS entry (docs/remote-access.md):

>>> console_url("127.0.0.1", 8866, "t0ken")
'http://127.0.0.1:8866/console/?token=t0ken'
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

from nexus_ops.agent import check_bind
from nexus_ops.config import Settings, child_environment
from nexus_ops.daemon import answers
from nexus_ops.errors import AgentUnavailable, NexusOpsError, PortInUse
from nexus_ops.logs import rotate_if_needed, tail
from nexus_ops.paths import Layout, atomic_write, read_or_create_secret
from nexus_ops.process import (
    check_port_free,
    find_live,
    identify,
    load_record,
    port_listener,
    remove_record,
    save_record,
    spawn,
    terminate_tree,
)
from nexus_ops.security.tokens import is_loopback, require_strong_token
from nexus_ops.ui.figurewidget import ASSET, plotly_bundle

NOTEBOOK = "console.ipynb"
RECORD = "voila.pid"  # who the running console's Voila is (pid, start time, command line)
INSTALLED = Path("share") / "nexus-ops" / "notebooks"
# Voila's base URL: fixed at its start, the same whether reached directly or through the
# HTTPS entry (whose /console/* route leads here unchanged).
CONSOLE_PATH = "/console/"


@dataclass(frozen=True)
class ConsoleOptions:
    """How to serve the console; ``None`` means "from the settings"."""

    host: str | None = None
    port: int | None = None
    token: str | None = None
    allow_remote: bool = False
    pool_size: int = 1
    cull_interval: float | None = None  # default: a quarter of the cull timeout, 5-30 s
    start_timeout: float = 60.0


@dataclass(frozen=True)
class ConsoleServer:
    """A running Voila serving the console."""

    url: str
    process: subprocess.Popen[bytes]
    root: Path
    log: Path


# ---- the notebook and the folder Voila serves -----------------------------------------


def candidate_notebooks() -> list[Path]:
    """Where the console notebook is looked for: the checkout, then where a wheel puts it."""
    found = [Path(__file__).resolve().parents[1] / "notebooks" / NOTEBOOK]
    for scheme in (None, "posix_user"):
        try:
            data = sysconfig.get_path("data", scheme) if scheme else sysconfig.get_path("data")
        except KeyError:
            continue
        found.append(Path(data) / INSTALLED / NOTEBOOK)
    return found


def locate_notebook() -> Path:
    """The console notebook of a source checkout, or of the installed package."""
    for path in candidate_notebooks():
        if path.is_file():
            return path
    raise NexusOpsError(
        "the console notebook is missing (looked in: "
        + ", ".join(str(p) for p in candidate_notebooks())
        + ")",
        hint="reinstall nexus-ops (its wheel installs share/nexus-ops/notebooks/console.ipynb)",
    )


def console_root(settings: Settings) -> Path:
    return settings.home / "console"


def token_file(settings: Settings) -> Path:
    return Layout(settings.home).secrets / "console.token"


def prepare_root(settings: Settings, notebook: Path | None = None) -> Path:
    """Fill ``$NEXUS_HOME/console/`` with the notebook and the shared plotly bundle."""
    Layout(settings.home).ensure()
    root = console_root(settings)
    root.mkdir(mode=0o700, exist_ok=True)
    root.chmod(0o700)
    atomic_write(root / NOTEBOOK, (notebook or locate_notebook()).read_bytes())
    bundle = plotly_bundle()
    target = root / ASSET
    if not target.is_file() or target.stat().st_size != bundle.stat().st_size:
        atomic_write(target, bundle.read_bytes())
    for stale in root.glob("plotly-widget-*.js"):
        if stale.name != ASSET:
            stale.unlink()
    return root


def voila_config(
    settings: Settings, options: ConsoleOptions, host: str, port: int, token: str
) -> dict[str, Any]:
    """The traitlets configuration of the console's Voila (written to voila.json)."""
    root = console_root(settings)
    return {
        "Voila": {
            "ip": host,
            "port": port,
            "port_retries": 0,
            "base_url": CONSOLE_PATH,
            "open_browser": False,
            "token": token,
            "root_dir": str(root),
            "notebook_path": str(root / NOTEBOOK),
        },
        "VoilaConfiguration": {
            "preheat_kernel": True,
            "default_pool_size": options.pool_size,
            "show_tracebacks": False,
            "file_allowlist": [re.escape(ASSET)],
            "multi_kernel_manager_class": f"{__name__}.ConsoleKernelManager",
        },
        "ConsoleVoila": {
            "allowed_hosts": settings.extra_hosts,
            "token_file": shown_token_file(settings, host),
            "token_given": options.token is not None,
        },
        "VoilaKernelManager": {"fill_delay": 0.5},
        "MappingKernelManager": {
            "cull_idle_timeout": int(settings.console_cull_timeout),
            "cull_interval": int(cull_interval(settings, options)),
            "cull_connected": False,
            "cull_busy": False,
        },
    }


def cull_interval(settings: Settings, options: ConsoleOptions) -> float:
    if options.cull_interval is not None:
        return options.cull_interval
    return min(30.0, max(5.0, settings.console_cull_timeout / 4))


def shown_token_file(settings: Settings, host: str) -> str:
    """The token file the login page shows: its path when the console listens on
    loopback; "" (the page then says ``$NEXUS_HOME/secrets/console.token``) when it
    listens beyond, where it would tell strangers the user's folders."""
    return str(token_file(settings)) if is_loopback(host) else ""


def console_url(host: str, port: int, token: str) -> str:
    """The URL to open (a wildcard address shown as 127.0.0.1)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}{CONSOLE_PATH}?token={token}"


# ---- security -------------------------------------------------------------------------


def console_token(settings: Settings, given: str | None) -> str:
    """The given token, else the one kept in ``$NEXUS_HOME/secrets/console.token``."""
    if given is not None:
        if not given.strip():
            raise NexusOpsError(
                "--token is empty", hint="give a token, or leave --token out to use a generated one"
            )
        return given.strip()
    Layout(settings.home).ensure()
    return read_or_create_secret(token_file(settings))


def check_console_bind(settings: Settings, host: str, token: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless remote access is allowed, and a weak token then."""
    allowed = settings.model_copy(update={"allow_remote": settings.allow_remote or allow_remote})
    check_bind(allowed, host=host, variable="the console's host (--host, NEXUS_CONSOLE_HOST)")
    if not is_loopback(host):
        require_strong_token(token, "the console token")


# ---- running Voila --------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Where the console will listen and the token that unlocks it, checked."""

    host: str
    port: int
    token: str

    @property
    def url(self) -> str:
        return console_url(self.host, self.port, self.token)


def running_console(settings: Settings, options: ConsoleOptions) -> str | None:
    """The URL of this ``NEXUS_HOME``'s console when its Voila already holds the port."""
    record = load_record(console_root(settings) / RECORD)
    port = options.port or settings.console_port
    if record is None or find_live(record) is None or port_listener(port) != record.pid:
        return None
    host = options.host or settings.console_host
    return console_url(host, port, console_token(settings, options.token))


def plan_console(settings: Settings, options: ConsoleOptions) -> Plan:
    """Host, port and token, refused when unsafe or taken (before anything starts)."""
    host = options.host or settings.console_host
    port = options.port or settings.console_port
    token = console_token(settings, options.token)
    check_console_bind(settings, host, token, options.allow_remote)
    try:
        check_port_free(host, port)
    except PortInUse as exc:
        raise PortInUse(
            exc.message,
            hint=f"stop it, or pick another port with --port or NEXUS_CONSOLE_PORT (now {port})",
        ) from exc
    return Plan(host, port, token)


def launch_console(settings: Settings, options: ConsoleOptions, plan: Plan) -> ConsoleServer:
    """Prepare the folder and start Voila (not waiting for it; the agent is not touched)."""
    root = prepare_root(settings)
    config = voila_config(settings, options, plan.host, plan.port, plan.token)
    atomic_write(root / "voila.json", json.dumps(config, indent=2).encode(), mode=0o600)
    log = Layout(settings.home).logs / "console.log"
    rotate_if_needed(log, settings.log_max_bytes, settings.log_backups)
    # The kernels run in root/: hand them the settings in force here (.env files included).
    env = child_environment(settings)
    spawned = spawn([sys.executable, "-m", "nexus_ops.console_voila"], env, root, log)
    save_record(root / RECORD, spawned.record)
    return ConsoleServer(plan.url, spawned.popen, root, log)


def start_console(settings: Settings, options: ConsoleOptions) -> ConsoleServer:
    """Plan, launch, and wait until Voila serves."""
    plan = plan_console(settings, options)
    server = launch_console(settings, options, plan)
    wait_until_serving(server, plan, options.start_timeout)
    return server


def wait_until_serving(server: ConsoleServer, plan: Plan, timeout: float) -> None:
    """Poll a static file (a ``GET /`` would start a kernel) until Voila answers."""
    probe = plan.url.split("/?", 1)[0] + f"/voila/files/{ASSET}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            last = "\n".join(tail(server.log, 15))
            raise NexusOpsError(
                f"Voila exited at once (code {server.process.returncode}):\n{last}",
                hint=f"read {server.log}",
            )
        try:
            if httpx.head(probe, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_console(server)
    raise NexusOpsError(f"Voila did not answer within {timeout:g} s", hint=f"read {server.log}")


def stop_console(server: ConsoleServer, grace: float = 10.0) -> list[int]:
    """Stop Voila and its kernels; the pids that survived."""
    try:
        record = identify(server.process.pid)
    except NexusOpsError:
        return []
    survivors = terminate_tree(record, grace)
    server.process.poll()
    if not survivors:
        remove_record(server.root / RECORD)
    return survivors


def start_agent(
    settings: Settings, timeout: float = 60.0, environ: Mapping[str, str] | None = None
) -> str:
    """Start the agent unless one answers; what happened, as a line to show.

    Through ``nexus-ops agent start`` in a child that exits at once, so that the
    agent is not a child of this long-lived process (whose zombie it would stay
    once stopped by someone else). ``environ`` (default: this process's) is the
    environment it inherits besides the settings, the server's too.
    """
    if answers(settings):
        return f"agent running at {settings.agent_base_url}"
    env = child_environment(settings, environ)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "nexus_ops", "agent", "start"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AgentUnavailable(
            f"the agent did not start within {timeout:g} s",
            hint=f"read {Layout(settings.home).agent_log}",
        ) from exc
    if done.returncode != 0:
        raise AgentUnavailable(
            f"the agent did not start: {done.stderr.strip() or done.stdout.strip()}",
            hint=f"read {Layout(settings.home).agent_log}",
        )
    return done.stdout.strip()


def run_console(
    settings: Settings, options: ConsoleOptions, say: Callable[[str], None] = print
) -> int:
    """Start the agent (if none answers) and the console; serve until Ctrl-C or SIGTERM.

    A console of this ``NEXUS_HOME`` already serving is not an error: its URL is shown.
    """
    running = running_console(settings, options)
    if running is not None:
        say(f"a console already runs: {running}")
        say(f"(its token: {token_file(settings)}; Ctrl-C in its terminal stops it)")
        return 0
    plan = plan_console(settings, options)
    say(start_agent(settings))
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    server: ConsoleServer | None = None
    try:
        server = launch_console(settings, options, plan)
        wait_until_serving(server, plan, options.start_timeout)
        say(f"console: {server.url}")
        say(f"(Voila's log: {server.log}; Ctrl-C stops the console, the agent keeps running)")
        code = server.process.wait()
        say(f"Voila exited with code {code}; see {server.log}")
        return 1
    except KeyboardInterrupt:
        say("stopping the console ...")
        survivors = stop_console(server) if server is not None else []
        if survivors:
            say(f"could not stop: {survivors}")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# ---- Voila's kernel manager -----------------------------------------------------------


class ConsoleKernelManager(AsyncMappingKernelManager):
    """Culls the idle kernels of closed pages, never the pre-heated ones waiting in the pool.

    Voila wraps this class with its pool (``_pools``: notebook -> tasks whose
    result holds a ``kernel_id``); a pooled kernel is idle by design.
    """

    async def cull_kernel_if_idle(self, kernel_id: str) -> None:
        if kernel_id in self.pooled_kernels():
            return
        await super().cull_kernel_if_idle(kernel_id)  # type: ignore[no-untyped-call]

    def pooled_kernels(self) -> set[str]:
        pools: dict[str, list[Any]] = getattr(self, "_pools", {})
        found = set()
        for pool in pools.values():
            for task in pool:
                if task.done() and not task.cancelled() and task.exception() is None:
                    found.add(str(task.result().get("kernel_id")))
        return found
