"""The ``nexus-ops`` command.

Each command group registers its subcommands with :func:`argparse` in a function
of its own; a handler takes the parsed arguments and returns an exit code. Errors
of nexus-ops are printed with their hint, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nexus_ops import __version__
from nexus_ops.alerts import describe_rule_status, export_rules, load_config
from nexus_ops.alerts.prometheus import SCRAPE_JOB
from nexus_ops.client import AgentClient
from nexus_ops.config import (
    Settings,
    SettingsReport,
    inspect_settings,
    load_settings,
)
from nexus_ops.daemon import answers, running_agent, start_daemon, stop_daemon
from nexus_ops.errors import AgentUnavailable, ConfigError, NexusOpsError
from nexus_ops.models import ActionResult, Event, PendingRestart, ServerState, ServerStatus
from nexus_ops.opencode import (
    attach_environment,
    binary_version,
    client_commands,
    install,
)
from nexus_ops.paths import atomic_write
from nexus_ops.recovery.commands import backup_commands, runbook_commands
from nexus_ops.remote import remote_commands
from nexus_ops.upgrade import commands as upgrade_commands
from nexus_ops.versions import open_versions, selected_binary

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NexusOpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexus-ops", description="Run, watch, back up and recover an OpenCode server."
    )
    parser.add_argument("--version", action="version", version=f"nexus-ops {__version__}")
    groups = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in COMMAND_GROUPS:
        register(groups)
    return parser


def settings() -> Settings:
    return load_settings()


def connect(autostart: bool = False) -> AgentClient:
    """A client of this host's agent; with ``autostart`` the agent is started if none answers.

    Only commands that act (``server start``, ``server restart``) start an agent: a
    command that only reads says that none runs and how to start one.
    """
    current = settings()
    if autostart:
        info = start_daemon(current)
        if info.started:
            print(f"agent started: pid {info.pid}, {info.url}", file=sys.stderr)
    elif not answers(current):
        raise AgentUnavailable(
            f"no agent answers at {current.agent_base_url} (NEXUS_HOME {current.home})",
            hint="start one with `nexus-ops agent start` (or check NEXUS_AGENT_URL)",
        )
    return AgentClient.from_settings(current, timeout=120.0)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


# ---- config ---------------------------------------------------------------------------


def config_commands(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = groups.add_parser("config", help="show or check the settings")
    sub = config.add_subparsers(title="actions", metavar="ACTION", required=True)
    show = sub.add_parser(
        "show",
        help="every setting, its value and where it came from (secrets masked); "
        "bad ones marked BAD, exit 2",
    )
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=config_show)
    check = sub.add_parser("check", help="validate the settings; exit 2 when invalid")
    check.set_defaults(handler=config_check)


def config_show(args: argparse.Namespace) -> int:
    """Every setting with where it came from; bad ones shown as given, marked, exit 2."""
    report = inspect_settings()
    rows = report.rows()
    if args.json:
        print_json(
            {
                "profile": report.settings.env,
                "settings": {var: value for var, value, _, _ in rows},
                "origins": {var: origin for var, _, origin, _ in rows},
                "problems": report.problems,
            }
        )
        return 2 if report.problems else 0
    print(f"profile: {report.settings.env}")
    width = max(len(var) for var, _, _, _ in rows)
    for var, value, origin, description in rows:
        mark = "BAD " if var in report.problems else "    "
        print(f"{mark}{var:<{width}}  {value or '-':<32}  {description}  [{origin}]")
    print_problems(report)
    return 2 if report.problems else 0


def print_problems(report: SettingsReport) -> None:
    if report.problems:
        print("\ninvalid settings:", file=sys.stderr)
        for problem in report.problems.values():
            print(f"  - {problem}", file=sys.stderr)


def config_check(args: argparse.Namespace) -> int:
    report = inspect_settings()
    if report.problems:
        print_problems(report)
        print("fix them where they are given (shown above) and try again", file=sys.stderr)
        return 2
    current = report.settings
    print(f"settings are valid (profile {current.env}, NEXUS_HOME {current.home})")
    return 0


# ---- opencode -------------------------------------------------------------------------


def opencode_commands(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    opencode = groups.add_parser(
        "opencode", help="install, list, pick, upgrade, roll back or locate OpenCode"
    )
    sub = opencode.add_subparsers(title="actions", metavar="ACTION", required=True)
    inst = sub.add_parser(
        "install",
        help="install a version of opencode-ai from npm beside the others",
        description="Install opencode-ai@VERSION into NEXUS_HOME/opencode/VERSION, whole or "
        "not at all. It becomes active with --activate, or when no version is active yet; "
        "then versions past NEXUS_OPENCODE_KEEP_VERSIONS are removed.",
    )
    inst.add_argument("version", nargs="?", help="exact version (default: the pinned one)")
    inst.add_argument("--version", dest="oc_version", help=argparse.SUPPRESS)
    inst.add_argument("--activate", action="store_true", help="make it the active version")
    inst.add_argument(
        "--prefix", type=Path, help="install into this folder instead, unmanaged (one version)"
    )
    inst.set_defaults(handler=opencode_install)
    versions = sub.add_parser("versions", help="the installed versions, and which one runs")
    versions.add_argument("--json", action="store_true", help="print JSON")
    versions.set_defaults(handler=opencode_versions)
    use = sub.add_parser(
        "use",
        help="make an installed version active (applied at the next server restart)",
    )
    use.add_argument("version", help="an installed version (see `nexus-ops opencode versions`)")
    use.set_defaults(handler=opencode_use)
    path = sub.add_parser("path", help="print the binary that would run, and its version")
    path.set_defaults(handler=opencode_path)
    show = sub.add_parser("connect", help="print the commands that connect a client to the server")
    show.add_argument(
        "--show-password", action="store_true", help="print the password instead of ********"
    )
    show.set_defaults(handler=opencode_connect)
    attach = sub.add_parser(
        "attach",
        help="open OpenCode's TUI on the managed server (the password passed unseen)",
        description="Run `opencode attach` on the managed server, the password given through "
        "OPENCODE_SERVER_PASSWORD (never on the command line); other arguments go to it.",
    )
    attach.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of `opencode attach`")
    attach.set_defaults(handler=opencode_attach)
    upgrade_commands.add_commands(sub, connect)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def opencode_install(args: argparse.Namespace) -> int:
    current = settings()
    if args.version and args.oc_version and args.version != args.oc_version:
        raise ConfigError(
            f"two versions given: {args.version} and --version {args.oc_version}",
            hint="give the version once, e.g. `nexus-ops opencode install 1.18.33`",
        )
    version = args.version or args.oc_version or current.opencode_version
    if args.prefix is not None:
        say(f"installing opencode-ai@{version} into {args.prefix} ...")
        binary = install(version, args.prefix)
    else:
        versions, database = open_versions(current, create=True)
        try:
            binary = versions.install(
                version, say, activate=args.activate, keep=current.opencode_keep_versions
            )
        finally:
            database.close()
    print(f"{binary} ({binary_version(binary)})")
    return 0


def opencode_versions(args: argparse.Namespace) -> int:
    current = settings()
    versions, database = open_versions(current)
    try:
        rows = versions.listing()
        runs = versions.select(current) if rows or current.opencode_bin else None
    finally:
        database.close()
    override = str(current.opencode_bin) if current.opencode_bin is not None else None
    if args.json:
        print_json(
            {
                "versions": [row.as_json() for row in rows],
                "active": next((row.version for row in rows if row.active), None),
                "override": override,
                "runs": str(runs.binary) if runs else None,
            }
        )
        return 0
    if not rows:
        print(f"no OpenCode version installed under {versions.root}")
        print("install one: `nexus-ops opencode install VERSION`")
    else:
        print(f"{'':2}{'VERSION':<14}{'INSTALLED':<18}{'LAST USED':<18}{'SIZE':>9}")
        for row in rows:
            mark = "* " if row.active else "  "
            used = when(row.last_used) if row.last_used else "never"
            size = f"{row.size / 2**20:.0f} MiB"
            print(f"{mark}{row.version:<14}{when(row.installed):<18}{used:<18}{size:>9}")
        print("(* active: the version the server starts)")
    if override is not None:
        print(
            f"NEXUS_OPENCODE_BIN is set: the server runs {override}, not the active version "
            "(unset it to run the active version)"
        )
    return 0


def when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def opencode_use(args: argparse.Namespace) -> int:
    current = settings()
    versions, database = open_versions(current, create=True)
    try:
        before = versions.use(args.version)
    finally:
        database.close()
    was = f" (was {before})" if before and before != args.version else ""
    print(f"OpenCode {args.version} is the active version{was}.")
    print("A running server keeps its version until it restarts: `nexus-ops server restart`.")
    if current.opencode_bin is not None:
        print(
            f"NEXUS_OPENCODE_BIN is set: the server runs {current.opencode_bin} until it is unset."
        )
    return 0


def opencode_path(args: argparse.Namespace) -> int:
    selection = selected_binary(settings())
    print(f"{selection.binary} ({binary_version(selection.binary)})")
    return 0


def opencode_connect(args: argparse.Namespace) -> int:
    from nexus_ops.ui.app import read_password

    current = settings()
    password = read_password(current) if args.show_password else None
    url = current.opencode_base_url
    print(f"server: {url}  user: {current.opencode_username}")
    for what, command in client_commands(url, current.opencode_username, password):
        print(f"\n# {what}\n{command}")
    return 0


def opencode_attach(args: argparse.Namespace) -> int:
    from nexus_ops.ui.app import read_password

    current = settings()
    binary = selected_binary(current).binary
    env = {**os.environ, **attach_environment(current.opencode_username, read_password(current))}
    argv = [str(binary), "attach", current.opencode_base_url, *args.rest]
    os.execve(binary, argv, env)  # noqa: S606 - the user's own TUI replaces this process


# ---- agent ----------------------------------------------------------------------------


def agent_commands(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = groups.add_parser("agent", help="run, start or stop the agent (default: run)")
    agent.set_defaults(handler=agent_run)
    sub = agent.add_subparsers(title="actions", metavar="ACTION")
    sub.add_parser("run", help="run in the foreground").set_defaults(handler=agent_run)
    sub.add_parser("start", help="start in the background").set_defaults(handler=agent_start)
    stop = sub.add_parser("stop", help="stop the background agent (the server keeps running)")
    stop.add_argument("--stop-server", action="store_true", help="stop the server first")
    stop.set_defaults(handler=agent_stop)
    sub.add_parser("status", help="is the agent running?").set_defaults(handler=agent_status)


def agent_run(args: argparse.Namespace) -> int:
    from nexus_ops.agent import serve

    serve(settings())
    return 0


def agent_start(args: argparse.Namespace) -> int:
    info = start_daemon(settings())
    verb = "started" if info.started else "already running"
    print(f"agent {verb}: pid {info.pid or '?'}, {info.url}")
    return 0


def agent_stop(args: argparse.Namespace) -> int:
    current = settings()
    if args.stop_server:
        with AgentClient.from_settings(current, timeout=120.0) as client:
            print(client.stop().message)
    survivors = stop_daemon(current)
    print("agent stopped" + (f"; survivors: {survivors}" if survivors else ""))
    return 1 if survivors else 0


def agent_status(args: argparse.Namespace) -> int:
    record = running_agent(settings())
    print(f"agent running: pid {record.pid}" if record else "agent not running")
    return 0 if record else 3


# ---- server ---------------------------------------------------------------------------


def server_commands(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    server = groups.add_parser("server", help="control the OpenCode server through the agent")
    sub = server.add_subparsers(title="actions", metavar="ACTION", required=True)
    for verb, help_text in SERVER_ACTIONS.items():
        action = sub.add_parser(verb, help=help_text)
        action.set_defaults(handler=server_action, verb=verb)
        if verb == "restart":
            action.add_argument(
                "--when-idle",
                action="store_true",
                help="wait until no session is busy (at most NEXUS_DRAIN_TIMEOUT s); "
                "the command returns at once and the status shows the waiting restart",
            )
    status = sub.add_parser("status", help="state, pid, version, port, uptime, restarts")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=server_status)
    logs = sub.add_parser("logs", help="the tail of the server's log")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--grep", help="only lines containing this text")
    logs.set_defaults(handler=server_logs)


SERVER_ACTIONS = {
    "start": "start the server (and the agent first, if none runs)",
    "stop": "stop the server",
    "restart": "restart the server (and start the agent first, if none runs)",
}


def server_action(args: argparse.Namespace) -> int:
    # Stopping needs no new agent: one started now would first bring back the server.
    with connect(autostart=args.verb != "stop") as client:
        if getattr(args, "when_idle", False):
            result: ActionResult = client.restart(when_idle=True)
        else:
            result = getattr(client, args.verb)()
    print(f"{result.message}; {describe_status(result.status)}")
    return 0 if result.ok else 1


def server_status(args: argparse.Namespace) -> int:
    with connect() as client:
        status = client.status()
    if args.json:
        print_json(status.model_dump(mode="json"))
    else:
        print(describe_status(status))
    return 0


def describe_status(status: ServerStatus) -> str:
    parts = [f"state {status.state.value}", f"desired {status.desired}"]
    if status.pid:
        parts.append(f"pid {status.pid}")
    if status.version:
        parts.append(f"version {status.version}")
    parts += [
        f"port {status.port}",
        f"uptime {describe_uptime(status)}",
        f"restarts {status.restarts}",
    ]
    if status.last_exit:
        parts.append(f"last exit: {status.last_exit}")
    if status.last_error:
        parts.append(f"last error: {status.last_error}")
    if status.busy_sessions:
        parts.append(f"busy sessions: {', '.join(status.busy_sessions)}")
    if status.pending_restart:
        parts.append(f"restart waiting: {describe_pending(status.pending_restart)}")
    return ", ".join(parts)


def describe_pending(pending: PendingRestart) -> str:
    """``operator, for ses_a, 12 s so far, at most 588 s more``."""
    return (
        f"{pending.reason}, for {', '.join(pending.sessions)}, "
        f"{pending.waiting_seconds:g} s so far, at most {pending.timeout_in:g} s more"
    )


def describe_uptime(status: ServerStatus) -> str:
    """Seconds the server has been up; ``-`` when no server process runs."""
    if status.pid is None or status.state in (ServerState.STOPPED, ServerState.FATAL):
        return "-"
    return f"{status.uptime_seconds:.0f}s"


def server_logs(args: argparse.Namespace) -> int:
    with connect() as client:
        lines, offset = client.log_chunk(args.lines, args.grep)
        print_lines(lines)
        while args.follow:
            time.sleep(1.0)
            lines, offset = client.log_chunk(FOLLOW_BATCH, args.grep, after=offset)
            print_lines(lines)
    return 0


FOLLOW_BATCH = 1000  # lines asked for per poll while following; the rest come next poll


def print_lines(lines: list[str]) -> None:
    for line in lines:
        print(line)
    sys.stdout.flush()


# ---- events ---------------------------------------------------------------------------


def events_commands(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = groups.add_parser("events", help="the journal: starts, exits, restarts, ...")
    events.add_argument("--limit", type=int, default=50, help="events to show (default 50)")
    events.add_argument("--kind", action="append", help="only this kind (repeatable)")
    events.add_argument("--json", action="store_true", help="print JSON")
    events.set_defaults(handler=show_events)


def show_events(args: argparse.Namespace) -> int:
    with connect() as client:
        found = client.events(kinds=args.kind, limit=args.limit)
    if args.json:
        print_json([e.model_dump(mode="json") for e in found])
    else:
        for event in found:
            print(describe_event(event))
    return 0


def describe_event(event: Event) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.time))
    reason = f" ({event.reason})" if event.reason else ""
    pid = f" pid {event.pid}" if event.pid else ""
    return f"{when}  {event.kind}{reason}{pid}  {event.message}"


# ---- console --------------------------------------------------------------------------


def console_commands(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    console = groups.add_parser(
        "console",
        help="start the agent and the web console",
        description="Start the agent (if none runs), then the web console (Voila) in the "
        "foreground; print its URL with its token. Ctrl-C stops the console; the agent "
        "and the server keep running.",
    )
    console.add_argument("--host", help="address to listen on (default: NEXUS_CONSOLE_HOST)")
    console.add_argument("--port", type=int, help="port to listen on (default: NEXUS_CONSOLE_PORT)")
    console.add_argument(
        "--token",
        help="token that unlocks the page (default: $NEXUS_HOME/secrets/console.token, "
        "generated the first time)",
    )
    console.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (as NEXUS_ALLOW_REMOTE=true does)",
    )
    console.set_defaults(handler=console_run)


def console_run(args: argparse.Namespace) -> int:
    from nexus_ops.console import ConsoleOptions, run_console

    options = ConsoleOptions(
        host=args.host, port=args.port, token=args.token, allow_remote=args.allow_remote
    )
    return run_console(settings(), options, say=lambda line: print(line, flush=True))


# ---- demo -----------------------------------------------------------------------------


def demo_commands(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = groups.add_parser(
        "demo",
        help="the console on a server with a scripted model and a steady workload",
        description="Start a scripted model, the agent and its server wired to it, a light "
        "steady workload and the web console, all in a NEXUS_HOME of their own (OpenCode's "
        "HOME and XDG folders inside it); print the console's URL. Ctrl-C stops all of it.",
    )
    demo.add_argument(
        "--home",
        type=Path,
        default=Path("~/.local/share/nexus-ops-demo"),
        help="the demo's NEXUS_HOME (default ~/.local/share/nexus-ops-demo; never your real one)",
    )
    demo.add_argument("--port", type=int, help="console port (default: NEXUS_CONSOLE_PORT)")
    demo.add_argument(
        "--sessions", type=int, default=2, help="sessions sending prompts at once (default 2)"
    )
    demo.add_argument(
        "--interval", type=float, default=5.0, help="seconds between a session's prompts (5)"
    )
    demo.add_argument(
        "--no-console",
        action="store_true",
        help="no web console: the agent, server and workload only (open the console notebook "
        "with NEXUS_HOME and NEXUS_DEMO=true set)",
    )
    demo.set_defaults(handler=demo_run)


def demo_run(args: argparse.Namespace) -> int:
    from nexus_ops.console import ConsoleOptions
    from nexus_ops.demo import DemoOptions, run_demo

    options = DemoOptions(
        home=args.home,
        console=not args.no_console,
        sessions=args.sessions,
        interval=args.interval,
        console_options=ConsoleOptions(port=args.port),
    )
    return run_demo(options, say=lambda line: print(line, flush=True))


# ---- alerts ---------------------------------------------------------------------------


def alerts_commands(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    alerts = groups.add_parser("alerts", help="alert rules, their states, Prometheus export")
    sub = alerts.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="every rule with its state and the webhooks' status")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=alerts_list)
    export = sub.add_parser(
        "export-prometheus", help="the same rules as Prometheus alerting rules (YAML)"
    )
    export.add_argument("--out", type=Path, help="write to this file instead of printing")
    export.add_argument(
        "--job",
        default=SCRAPE_JOB,
        help=f"Prometheus job that scrapes the agent, for the agent-down rule "
        f"(default {SCRAPE_JOB}; empty: no such rule)",
    )
    export.set_defaults(handler=alerts_export)


def alerts_list(args: argparse.Namespace) -> int:
    with connect() as client:
        view = client.alerts()
    if args.json:
        print_json(view.model_dump(mode="json"))
        return 0
    print(f"{'rule':<28} {'state':<22} {'value':>12}  condition")
    for status in view.rules:
        print(describe_rule_status(status))
    for receiver in view.receivers:
        error = f"; last error: {receiver.last_error}" if receiver.last_error else ""
        print(
            f"webhook {receiver.receiver}: {receiver.delivered} delivered, "
            f"{receiver.failed} failed{error}"
        )
    return 0


def alerts_export(args: argparse.Namespace) -> int:
    rules = load_config(settings()).rules
    text = export_rules(rules, scrape_job=args.job)
    if args.out is None:
        print(text, end="")
        return 0
    atomic_write(args.out, text.encode())
    print(f"wrote {len(rules)} rules to {args.out}", file=sys.stderr)
    return 0


# ---- security -------------------------------------------------------------------------


def security_commands(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("security", help="security posture report and dependency audit")
    sub = group.add_subparsers(title="actions", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="pass, warn or fail for each item; exit 1 on a fail")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=security_check)
    audit = sub.add_parser(
        "audit", help="vulnerabilities (pip-audit), SBOM (CycloneDX) and licences into a folder"
    )
    audit.add_argument("--out", type=Path, required=True, help="folder to write the reports to")
    audit.add_argument(
        "--service", choices=("pypi", "osv"), default="pypi", help="vulnerability service (pypi)"
    )
    audit.add_argument("--json", action="store_true", help="print JSON")
    audit.set_defaults(handler=security_audit)


def security_check(args: argparse.Namespace) -> int:
    from nexus_ops.security import posture_check

    report = posture_check(settings())
    if args.json:
        print_json({"ok": report.ok, **report.model_dump(mode="json")})
    else:
        print(report.text())
    return 0 if report.ok else 1


def security_audit(args: argparse.Namespace) -> int:
    from nexus_ops.security import run_audit

    print("auditing the installed packages (about a minute) ...", file=sys.stderr)
    report = run_audit(args.out, vulnerability_service=args.service)
    if args.json:
        print_json({"ok": report.ok, **report.model_dump(mode="json")})
    else:
        print(report.text())
    return 0 if report.ok else 1


# ---- the HTTPS entry ------------------------------------------------------------------


def entry_commands(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("entry", help="the HTTPS entry for remote devices (Caddy)")
    sub = group.add_subparsers(title="entry commands", metavar="COMMAND")
    status = sub.add_parser("status", help="on or off, TLS, certificate expiry, address, URLs")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=entry_status)
    sub.add_parser(
        "ca", help="the local CA's root certificate to trust on devices: path and fingerprint"
    ).set_defaults(handler=entry_ca)
    sub.add_parser(
        "check", help="check the NEXUS_ENTRY_* settings and Caddy's binary; exit 2 when bad"
    ).set_defaults(handler=entry_check)


def entry_status(args: argparse.Namespace) -> int:
    from nexus_ops.entry.report import entry_state

    state = entry_state(settings())
    if args.json:
        print_json(
            {
                **state.__dict__,
                "expires": state.expires.timestamp() if state.expires else None,
                "urls": state.urls,
            }
        )
    else:
        print("\n".join(state.lines()))
    return 0


def entry_ca(args: argparse.Namespace) -> int:
    from nexus_ops.entry.report import root_ca

    root = root_ca(settings())
    print(f"root certificate: {root.path}")
    print(f"sha-256 fingerprint: {root.fingerprint}")
    print(f"expires: {root.expires:%Y-%m-%d} UTC")
    print("trust it on each device: docs/remote-access.md (iOS, Android, macOS, Linux, Windows)")
    return 0


def entry_check(args: argparse.Namespace) -> int:
    from nexus_ops.entry.caddy import check_entry

    binary = check_entry(settings())
    print(f"entry settings are valid; Caddy: {binary}")
    return 0


COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    config_commands,
    opencode_commands,
    agent_commands,
    server_commands,
    events_commands,
    console_commands,
    demo_commands,
    alerts_commands,
    security_commands,
    entry_commands,
    backup_commands,
    runbook_commands,
    remote_commands(connect),
]
