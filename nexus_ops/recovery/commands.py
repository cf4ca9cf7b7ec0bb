"""The ``nexus-ops backup`` and ``nexus-ops runbook`` commands.

Backups are made, verified and pruned in this process (they need no agent, which
matters when the agent is what is broken); a live restore stops and starts the
server through the agent. Runbooks run here too, with papermill's progress bar.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from nexus_ops.backup.models import BackupInfo, PruneReport, RestoreReport, VerifyReport
from nexus_ops.backup.retention import RetentionPolicy
from nexus_ops.backup.service import BackupService, policy_of
from nexus_ops.config import load_settings
from nexus_ops.errors import BackupError, ParameterError
from nexus_ops.paths import Layout, atomic_write
from nexus_ops.store import Database
from nexus_ops.store.runs import RunRecord

if TYPE_CHECKING:  # papermill takes a second to import: only when a runbook command runs
    from nexus_ops.runbooks.models import Runbook
    from nexus_ops.runbooks.service import RunbookService

Groups: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# ---- backup ----------------------------------------------------------------------------


def backup_commands(groups: Groups) -> None:
    backup = groups.add_parser("backup", help="create, list, verify, restore and prune backups")
    sub = backup.add_subparsers(title="actions", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="back up OpenCode's config and data now")
    create.add_argument(
        "--include-nexus",
        action="store_true",
        default=None,
        help="also nexus-ops's logs and settings (NEXUS_BACKUP_INCLUDE_NEXUS)",
    )
    create.add_argument("--json", action="store_true", help="print the manifest as JSON")
    create.set_defaults(handler=backup_create)
    listing = sub.add_parser("list", help="the backups, newest first")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=backup_list)
    verify = sub.add_parser("verify", help="check checksums and database integrity")
    verify.add_argument("id", nargs="?", help="backup id (default: the newest)")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(handler=backup_verify)
    restore = sub.add_parser("restore", help="restore a backup into a folder or over the live one")
    restore.add_argument("id", help="backup id (`nexus-ops backup list`)")
    where = restore.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", type=Path, metavar="DIR", help="a new or empty folder")
    where.add_argument(
        "--live",
        action="store_true",
        help="over the live OpenCode folders (stops and starts the server)",
    )
    restore.add_argument(
        "--part",
        action="append",
        choices=["config", "data", "nexus"],
        help="restore only this part (repeatable; default: all)",
    )
    restore.add_argument("--json", action="store_true", help="print JSON")
    restore.set_defaults(handler=backup_restore)
    prune = sub.add_parser("prune", help="remove the backups the retention policy does not keep")
    prune.add_argument("--dry-run", action="store_true", help="only show what would go")
    for rule in ("last", "daily", "weekly", "monthly"):
        prune.add_argument(
            f"--keep-{rule}",
            type=int,
            metavar="N",
            help=f"override NEXUS_BACKUP_KEEP_{rule.upper()}",
        )
    prune.add_argument(
        "--keep-within-days",
        type=float,
        metavar="DAYS",
        help="override NEXUS_BACKUP_KEEP_WITHIN_DAYS",
    )
    prune.add_argument("--json", action="store_true", help="print JSON")
    prune.set_defaults(handler=backup_prune)


def _service() -> BackupService:
    return BackupService.open(load_settings())


def backup_create(args: argparse.Namespace) -> int:
    manifest = _service().create(trigger="cli", include_nexus=args.include_nexus)
    if args.json:
        _print_json(manifest.model_dump(mode="json"))
        return 0
    size = manifest.archive.size if manifest.archive else 0
    print(
        f"backup {manifest.id}: {len(manifest.files)} files, {_size(size)}, "
        f"{manifest.sessions if manifest.sessions is not None else 'no'} sessions, "
        f"{manifest.duration_seconds:.1f} s"
    )
    return 0


def backup_list(args: argparse.Namespace) -> int:
    backups = _service().backups()
    if args.json:
        _print_json([b.model_dump(mode="json") for b in backups])
        return 0
    if not backups:
        print("no backups yet (`nexus-ops backup create` makes one)")
    for info in backups:
        print(describe_backup(info))
    return 0


def describe_backup(info: BackupInfo) -> str:
    sessions = "-" if info.sessions is None else str(info.sessions)
    return (
        f"{info.id}  {_when(info.created)}  {info.kind:<11}  {_size(info.size):>10}  "
        f"{info.files:>6} files  {sessions:>5} sessions  OpenCode {info.opencode_version}"
    )


def backup_verify(args: argparse.Namespace) -> int:
    service = _service()
    backup_id = args.id or _newest(service)
    report = service.verify(backup_id, trigger="cli")
    if args.json:
        _print_json(report.model_dump(mode="json"))
    else:
        print(describe_verify(report))
    return 0 if report.ok else 1


def _newest(service: BackupService) -> str:
    backups = service.backups()
    if not backups:
        raise BackupError(
            "there is no backup to verify", hint="`nexus-ops backup create` makes one"
        )
    return backups[0].id


def describe_verify(report: VerifyReport) -> str:
    if report.ok:
        dbs = ", ".join(f"{p}: {r}" for p, r in report.integrity.items()) or "no database"
        return f"{report.id}: OK ({report.checked_files} members; integrity {dbs})"
    return f"{report.id}: FAILED\n" + "\n".join(f"  - {p}" for p in report.problems)


def backup_restore(args: argparse.Namespace) -> int:
    service = _service()
    if args.to is not None:
        report = service.restore_to_folder(args.id, args.to, args.part)
    else:
        if args.part and "nexus" in args.part:
            raise BackupError(
                "the nexus part can only be restored into a folder", hint="use --to DIR"
            )
        from nexus_ops.recovery.context import AgentControl

        report = service.restore_live(args.id, AgentControl(_agent()), args.part, trigger="cli")
    if args.json:
        _print_json(report.model_dump(mode="json"))
    else:
        print(describe_restore(report))
    return 0 if report.ok else 1


def _agent() -> Any:
    from nexus_ops.client import AgentClient
    from nexus_ops.daemon import start_daemon

    settings = load_settings()
    start_daemon(settings)
    return AgentClient.from_settings(settings, timeout=120.0)


def describe_restore(report: RestoreReport) -> str:
    head = (
        f"restored {report.backup_id} into {report.target} ({', '.join(report.parts)}) "
        f"in {report.seconds:.1f} s"
        if report.ok
        else f"restore of {report.backup_id} FAILED: {report.error}"
        + ("; the previous state was put back" if report.rolled_back else "")
    )
    lines = [head, *(f"  - {step}" for step in report.steps)]
    if report.pre_restore_backup:
        lines.append(f"what was replaced is in backup {report.pre_restore_backup}")
    return "\n".join(lines)


def backup_prune(args: argparse.Namespace) -> int:
    settings = load_settings()
    base = policy_of(settings)
    policy = RetentionPolicy(
        keep_last=_pick(args.keep_last, base.keep_last),
        keep_daily=_pick(args.keep_daily, base.keep_daily),
        keep_weekly=_pick(args.keep_weekly, base.keep_weekly),
        keep_monthly=_pick(args.keep_monthly, base.keep_monthly),
        keep_within_days=_pick(args.keep_within_days, base.keep_within_days),
    )
    report = BackupService.open(settings).prune(dry_run=args.dry_run, policy=policy)
    if args.json:
        _print_json(report.model_dump(mode="json"))
    else:
        print(describe_prune(report, policy))
    return 0


def _pick(given: Any, default: Any) -> Any:
    return default if given is None else given


def describe_prune(report: PruneReport, policy: RetentionPolicy) -> str:
    lines = [f"policy: {policy.describe()}"]
    for decision in report.decisions:
        verdict = "keep  " if decision.keep else "remove"
        lines.append(f"  {verdict}  {decision.id}  {', '.join(decision.reasons)}")
    gone = report.to_remove if report.dry_run else report.removed
    verb = "would remove" if report.dry_run else "removed"
    lines.append(
        f"{verb} {len(gone)} backup(s), kept {len(report.kept)}"
        + (f", freed {_size(report.freed_bytes)}" if report.freed_bytes else "")
    )
    if report.cleaned:
        lines.append(
            f"{'would clean' if report.dry_run else 'cleaned'} partial files: "
            + ", ".join(report.cleaned)
        )
    return "\n".join(lines)


# ---- runbook ---------------------------------------------------------------------------


def runbook_commands(groups: Groups) -> None:
    runbook = groups.add_parser("runbook", help="list, show and run the recovery runbooks")
    sub = runbook.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="the runbooks and what each is for")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=runbook_list)
    show = sub.add_parser("show", help="a runbook's purpose and parameters")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=runbook_show)
    run = sub.add_parser("run", help="run a runbook (a dry run unless -p dry_run false)")
    run.add_argument("name")
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        default=[],
        help="a parameter (repeatable), e.g. -p dry_run false",
    )
    run.add_argument("--who", help="who runs it, for the record (default: user@host)")
    run.add_argument("--json", action="store_true", help="print the run record as JSON")
    run.set_defaults(handler=runbook_run)
    shown = sub.add_parser(
        "show-run", help="one run: trigger, parameters, verdict, every finding; its notebook"
    )
    shown.add_argument("id", help="the run's id (see `runbook runs`)")
    shown.add_argument(
        "--html", metavar="FILE", type=Path, help="also write the executed notebook as HTML"
    )
    shown.add_argument("--json", action="store_true", help="print the run record as JSON")
    shown.set_defaults(handler=runbook_show_run)
    runs = sub.add_parser("runs", help="recent runs: who, when, parameters, status, verdict")
    runs.add_argument("--limit", type=int, default=20, help="runs to show (default 20)")
    runs.add_argument("--json", action="store_true", help="print JSON")
    runs.set_defaults(handler=runbook_runs)


def _runbooks() -> RunbookService:
    from nexus_ops.runbooks.service import RunbookService

    settings = load_settings()
    return RunbookService(settings, Database(Layout(settings.home).ensure().database))


def runbook_list(args: argparse.Namespace) -> int:
    books = _runbooks().runbooks()
    if args.json:
        _print_json([b.model_dump(mode="json") for b in books])
        return 0
    width = max((len(b.name) for b in books), default=0)
    titled = max((len(b.title) for b in books), default=0)
    for book in books:
        print(f"{book.name:<{width}}  {book.title:<{titled}}  {book.purpose}".rstrip())
    return 0


def runbook_show(args: argparse.Namespace) -> int:
    book = _runbooks().get(args.name)
    if args.json:
        _print_json(book.model_dump(mode="json"))
    else:
        print(describe_runbook(book))
    return 0


def describe_runbook(book: Runbook) -> str:
    from nexus_ops.runbooks.prose import markdown_text

    lines = [f"{book.name}: {book.title}", "", markdown_text(book.description), "", "parameters:"]
    for p in book.parameters:
        lines.append(f"  {p.name}: {p.type} = {p.default!r}  # {p.help}")
    lines += ["", f"notebook: {book.path}"]
    return "\n".join(lines)


def runbook_run(args: argparse.Namespace) -> int:
    service = _runbooks()
    parameters = dict(args.parameter)
    if len(parameters) != len(args.parameter):
        keys = [key for key, _ in args.parameter]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        raise ParameterError(
            f"parameter(s) given more than once: {', '.join(twice)}",
            hint="give each -p KEY VALUE once",
        )
    record = service.runner().run(
        args.name, parameters, who=args.who, from_strings=True, progress_bar=True
    )
    if args.json:
        _print_json(record.model_dump(mode="json"))
    else:
        print(describe_run(record))
    return 0 if record.status == "succeeded" and record.healthy else 1


def describe_run(record: RunRecord) -> str:
    """A run as the operator reads it: what, who, when, with what, and how it ended."""
    took = f"{record.duration:.1f} s" if record.duration is not None else "running"
    params = ", ".join(f"{k}={v!r}" for k, v in sorted(record.parameters.items())) or "none"
    lines = [
        f"run {record.id}: {record.runbook} {record.status} ({took})",
        f"started: {_when(record.started)} by {record.who}",
        f"parameters: {params}",
    ]
    if record.verdict:
        from nexus_ops.runbooks.verdict import Verdict

        lines.append(Verdict.model_validate(record.verdict).text())
    if record.error:
        where = f" (cell {record.failed_cell})" if record.failed_cell is not None else ""
        lines.append(f"error{where}: {record.error}")
    lines.append(f"notebook: {record.notebook}")
    return "\n".join(lines)


def runbook_show_run(args: argparse.Namespace) -> int:
    service = _runbooks()
    record = service.run(args.id)
    if args.html is not None:
        _write_html(args.html, service.notebook_html(record.id))
    if args.json:
        _print_json(record.model_dump(mode="json"))
    else:
        print(describe_run(record))
        if args.html is not None:
            print(f"html: {args.html}")
    return 0


def _write_html(path: Path, html: str) -> None:
    if path.is_dir() or not path.parent.is_dir():
        raise ParameterError(
            f"--html {path}: not a file in an existing folder",
            hint="give the path of the HTML file to write, e.g. --html run.html",
        )
    atomic_write(path, html.encode("utf-8"))


def runbook_runs(args: argparse.Namespace) -> int:
    runs = _runbooks().runs(args.limit)
    if args.json:
        _print_json([r.model_dump(mode="json") for r in runs])
        return 0
    for run in runs:
        verdict = {None: "-", True: "healthy", False: "unhealthy"}[run.healthy]
        params = " ".join(f"{k}={v}" for k, v in sorted(run.parameters.items())) or "-"
        print(
            f"{run.id}  {_when(run.started)}  {run.runbook:<20} {run.status:<11} "
            f"{verdict:<9}  {run.who}  {params}"
        )
    return 0


COMMANDS = [backup_commands, runbook_commands]
