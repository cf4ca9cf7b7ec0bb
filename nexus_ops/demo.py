"""``nexus-ops demo``: the console on a managed server with a scripted model and a workload.

Everything lives in the demo's own ``NEXUS_HOME`` (``--home``, default
``~/.local/share/nexus-ops-demo``): nexus-ops' data as usual, and under ``demo/``
the HOME, XDG folders and project of the demo's OpenCode, so that the user's own
OpenCode config and data are never read or changed. This process owns the scripted
model provider and the steady workload; it starts the agent (with ``NEXUS_DEMO``
set, so that the console says it is a demo), which starts the server, then the
console. Ctrl-C or SIGTERM stops all of it: the console, the workload, the server,
the agent and the provider.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nexus_ops.client import AgentClient
from nexus_ops.config import Settings, load_settings
from nexus_ops.console import (
    ConsoleOptions,
    ConsoleServer,
    launch_console,
    plan_console,
    running_console,
    start_agent,
    stop_console,
    wait_until_serving,
)
from nexus_ops.daemon import answers, running_agent, stop_daemon
from nexus_ops.errors import ConfigError, NexusOpsError, PortInUse
from nexus_ops.opencode import Credentials, locate_binary
from nexus_ops.paths import Layout
from nexus_ops.ui.app import read_password
from nexus_ops.versions import selected_binary
from nexus_ops.workload.config import write_provider_config
from nexus_ops.workload.provider import ScriptedProvider
from nexus_ops.workload.steady import SteadyWorkload, check_load, demo_script

DEFAULT_HOME = Path("~/.local/share/nexus-ops-demo")
USER_HOME = Path("~/.local/share/nexus-ops")  # the default NEXUS_HOME, never the demo's
XDG = {
    "XDG_CONFIG_HOME": "config",
    "XDG_DATA_HOME": "data",
    "XDG_CACHE_HOME": "cache",
    "XDG_STATE_HOME": "state",
}


@dataclass(frozen=True)
class DemoOptions:
    home: Path = DEFAULT_HOME
    console: bool = True  # False: the agent, server and workload only (e.g. for Binder)
    sessions: int = 2
    interval: float = 5.0
    console_options: ConsoleOptions = field(default_factory=ConsoleOptions)


@dataclass(frozen=True)
class DemoFolders:
    """The demo's OpenCode folders inside its ``NEXUS_HOME``."""

    nexus_home: Path

    @property
    def root(self) -> Path:
        return self.nexus_home / "demo"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def project(self) -> Path:
        return self.root / "project"

    def environment(self) -> dict[str, str]:
        """HOME and XDG_* of the demo's OpenCode."""
        env = {"HOME": str(self.home)}
        for var, name in XDG.items():
            env[var] = str(self.root / name)
        return env

    def ensure(self) -> DemoFolders:
        for folder in (self.home, self.project, *map(Path, self.environment().values())):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self


def check_home(home: Path, environ: Mapping[str, str]) -> Path:
    """The demo's ``NEXUS_HOME``, refused when it is the user's real one."""
    resolved = home.expanduser().resolve()
    real = [USER_HOME.expanduser().resolve()]
    if environ.get("NEXUS_HOME"):
        real.append(Path(environ["NEXUS_HOME"]).expanduser().resolve())
    if resolved in real:
        raise ConfigError(
            f"--home {home} is the NEXUS_HOME of your real nexus-ops: the demo would fill it "
            "with a scripted model's sessions",
            hint=f"give the demo a folder of its own, e.g. --home {DEFAULT_HOME}",
        )
    return resolved


def demo_settings(home: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of this environment, with the demo's home, project and binary."""
    environ = dict(os.environ if environ is None else environ)
    home = check_home(home, environ)
    values = {
        **environ,
        "NEXUS_HOME": str(home),
        "NEXUS_DEMO": "true",
        "NEXUS_OPENCODE_WORKDIR": str(DemoFolders(home).project),
    }
    settings = load_settings(values)
    binary = demo_binary(settings, environ)
    return settings.model_copy(update={"opencode_bin": binary})


def demo_binary(settings: Settings, environ: Mapping[str, str]) -> Path:
    """NEXUS_OPENCODE_BIN, else the one installed in the demo's or the user's NEXUS_HOME."""
    if settings.opencode_bin is not None:
        return locate_binary(settings.opencode_bin, Layout(settings.home).opencode_prefix)
    for home in (settings.home, Path(environ.get("NEXUS_HOME") or USER_HOME).expanduser()):
        try:
            return selected_binary(settings.model_copy(update={"home": home})).binary
        except NexusOpsError:
            continue
    return locate_binary(None, Layout(settings.home).opencode_prefix)


def run_demo(options: DemoOptions, say: Callable[[str], None] = print) -> int:
    """Start the demo and keep it running until Ctrl-C or SIGTERM; then stop all of it."""
    check_load(options.sessions, options.interval)
    settings = demo_settings(options.home)
    if options.console and (url := running_console(settings, options.console_options)):
        say(f"the demo already runs: {url}")
        return 0
    Layout(settings.home).ensure()
    folders = DemoFolders(settings.home).ensure()
    clear_leftover_agent(settings, say)
    plan = plan_console(settings, options.console_options) if options.console else None
    # SIGINT too: a demo started in the background of a script inherits it ignored.
    previous = {
        sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    provider = ScriptedProvider(demo_script()).start()
    workload: SteadyWorkload | None = None
    console: ConsoleServer | None = None
    agent_started = False
    try:
        write_provider_config(folders.home, provider.base_url, folders.config)
        say(f"demo home: {settings.home} (scripted model at {provider.base_url})")
        say(start_agent(settings, environ={**os.environ, **folders.environment()}))
        agent_started = True
        with AgentClient.from_settings(settings, timeout=120.0) as client:
            say(client.start().message)
        credentials = Credentials(settings.opencode_username, read_password(settings))
        workload = SteadyWorkload(
            settings.opencode_base_url, credentials, options.sessions, options.interval
        ).start()
        say(f"workload: a prompt every {options.interval:g} s in {options.sessions} session(s)")
        if plan is None:
            say("Ctrl-C stops the demo")
            while True:
                time.sleep(3600)
        console = launch_console(settings, options.console_options, plan)
        wait_until_serving(console, plan, options.console_options.start_timeout)
        say(f"console: {console.url}")
        say("Ctrl-C stops the demo: the console, the workload, the server and the agent")
        code = console.process.wait()
        say(f"Voila exited with code {code}; see {console.log}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping the demo ...")
        survivors = stop_console(console) if console is not None else []
        if workload is not None:
            workload.stop()
        if agent_started:
            survivors += stop_agent_and_server(settings)
        provider.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        say(f"could not stop: {survivors}" if survivors else "demo stopped")


def clear_leftover_agent(settings: Settings, say: Callable[[str], None]) -> None:
    """Stop the agent an interrupted demo left behind (its server talks to a dead model)."""
    if not answers(settings):
        return
    if running_agent(settings) is None:
        raise PortInUse(
            f"another agent answers at {settings.agent_base_url}, not the demo's",
            hint="stop it, or give the demo other ports (NEXUS_AGENT_PORT, "
            "NEXUS_OPENCODE_PORT, NEXUS_CONSOLE_PORT)",
        )
    say("stopping the agent and server a previous demo left running ...")
    stop_agent_and_server(settings)


def stop_agent_and_server(settings: Settings) -> list[int]:
    """Stop the server, then the agent; the pids that survived."""
    try:
        with AgentClient.from_settings(settings, timeout=60.0) as client:
            client.stop()
    except NexusOpsError:
        pass  # the agent is gone already: stop_daemon says what is left
    try:
        return stop_daemon(settings)
    except NexusOpsError:
        return []


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
