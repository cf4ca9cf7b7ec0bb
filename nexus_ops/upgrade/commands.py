"""``nexus-ops opencode upgrade`` and ``nexus-ops opencode rollback``: through the agent.

The agent runs the upgrade (it owns the server); the command begins it, then
follows its record and prints each step as it is reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeAlias

from nexus_ops.client import AgentClient
from nexus_ops.upgrade.record import OperationRecord

Actions: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Connect = Callable[[bool], AgentClient]
FOLLOW_POLL = 0.5


def add_commands(sub: Actions, connect: Connect) -> None:
    """Register ``upgrade`` and ``rollback`` under the ``opencode`` group."""
    up = sub.add_parser(
        "upgrade",
        help="upgrade OpenCode behind a health gate and a probation (rolled back on failure)",
        description="Install VERSION if missing, back up (pre-upgrade), wait for busy "
        "sessions, stop, activate VERSION, start, check it (healthy, its version, the "
        "database's integrity, every session and their last messages), then watch it for "
        "NEXUS_UPGRADE_PROBATION minutes. A failed check rolls back at once.",
    )
    up.add_argument("version", nargs="?", help="exact version (default: the newest on npm)")
    up.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    up.add_argument(
        "--probation", type=float, metavar="MINUTES", help="default: NEXUS_UPGRADE_PROBATION"
    )
    up.add_argument(
        "--status", action="store_true", help="show the current or last upgrade or rollback"
    )
    up.add_argument("--json", action="store_true", help="print JSON")
    up.set_defaults(handler=lambda args: upgrade(args, connect))
    back = sub.add_parser(
        "rollback",
        help="roll the last upgrade back (its database kept aside, the pre-upgrade backup "
        "restored, the previous version started)",
    )
    back.add_argument("--json", action="store_true", help="print JSON")
    back.set_defaults(handler=lambda args: rollback(args, connect))


def upgrade(args: argparse.Namespace, connect: Connect) -> int:
    if args.status:
        with connect(False) as client:
            return show_status(client.upgrade_status(), args.json)
    with connect(True) as client:
        answer = client.upgrade(args.version, args.dry_run, args.probation)
        if args.dry_run:
            return show_plan(answer["plan"], args.json)
        say(f"upgrade {answer['plan']['from']} -> {answer['plan']['to']} begun")
        record = follow(client)
    return show_end(record, args.json)


def rollback(args: argparse.Namespace, connect: Connect) -> int:
    with connect(True) as client:
        say("rolling back the last upgrade ...")
        record = client.rollback()
    return show_end(record, args.json)


def follow(client: AgentClient) -> OperationRecord:
    """Poll the operation until it ends, printing each step as it begins."""
    shown = 0
    while True:
        record = client.upgrade_operation()
        assert record is not None
        for entry in record.steps[shown:]:
            say(f"  {entry.name} ...")
        shown = len(record.steps)
        if not record.running:
            return record
        time.sleep(FOLLOW_POLL)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def show_plan(plan: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(plan, indent=2))
        return 0
    print(f"dry run: nothing is changed. Upgrade plan, OpenCode {plan['from']} -> {plan['to']}:")
    print(f"  install: {'from npm' if plan['install'] else 'already installed'}")
    print(f"  backup:  {plan['backup']}")
    print(f"  drain:   {plan['drain']}")
    print("  gate:")
    for check in plan["gate"]:
        print(f"    - {check}")
    print(f"  probation: {plan['probation_minutes']:g} min (a crash, hang or failed probe "
          "rolls back)")  # fmt: skip
    return 0


def describe(record: OperationRecord) -> list[str]:
    lines = [
        f"{record.operation} {record.from_version} -> {record.to_version} ({record.id}): "
        + (record.outcome or f"running ({record.step})")
    ]
    for entry in record.steps:
        took = f"{entry.ended - entry.started:.1f} s" if entry.ended is not None else "..."
        mark = {True: "ok", False: "FAILED", None: ""}[entry.ok]
        detail = f"  {entry.detail}" if entry.detail else ""
        stamp = time.strftime("%H:%M:%S", time.localtime(entry.started))
        lines.append(f"  {stamp} {entry.name:<20} {took:>8} {mark}{detail}")
    if record.error:
        lines.append(f"  error: {record.error}")
    if record.aside:
        lines.append(f"  the database of {record.from_version if record.operation == 'rollback' else record.to_version} "
                     f"is kept in {record.aside}")  # fmt: skip
    return lines


def show_status(status: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    found = status.get("operation")
    if found is None:
        print("no upgrade yet")
        return 0
    print("\n".join(describe(OperationRecord.model_validate(found))))
    return 0


def show_end(record: OperationRecord, as_json: bool) -> int:
    if as_json:
        print(record.model_dump_json(indent=2))
    else:
        print("\n".join(describe(record)))
    wanted = "upgraded" if record.operation == "upgrade" else "rolled back"
    return 0 if record.outcome == wanted else 1
