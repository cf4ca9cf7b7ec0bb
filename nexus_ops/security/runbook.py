"""What the ``security_audit`` runbook calls: a permission repair, the audit, the verdict.

>>> fixes = PermissionFixes(dry_run=True, changes=["chmod 600 /h/secrets/agent.token (was 644)"])
>>> fixes.needed, fixes.done
(True, False)
"""

from __future__ import annotations

import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from nexus_ops.config import Settings
from nexus_ops.errors import SecurityError
from nexus_ops.models import Frozen
from nexus_ops.paths import Layout
from nexus_ops.runbooks.verdict import Action, Finding, Verdict
from nexus_ops.security.audit import AuditReport, run_audit
from nexus_ops.security.posture import PostureReport, opencode_data_dir

_FINDING_SEVERITY = {"warn": "warning", "unreachable": "warning"}


class PermissionFixes(Frozen):
    """The chmods that lock secrets and data to this user: planned (dry run) or made."""

    dry_run: bool
    changes: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)

    @property
    def needed(self) -> bool:
        return bool(self.changes)

    @property
    def done(self) -> bool:
        return self.needed and not self.dry_run

    def _repr_markdown_(self) -> str:
        if not self.changes:
            return "**permissions**: nothing to change"
        verb = "would run (dry run)" if self.dry_run else "ran"
        lines = [f"**permissions**: {verb}:", ""] + [f"- `{c}`" for c in self.changes]
        lines += [f"- FAILED: {e}" for e in self.errors]
        return "\n".join(lines)


def _wanted_modes(settings: Settings) -> Iterator[tuple[Path, int]]:
    """Every path that should be private, with the mode it should at most have."""
    layout = Layout(settings.home)
    for folder in (layout.home, layout.secrets, layout.backups, opencode_data_dir()):
        if folder.is_dir():
            yield folder, 0o700
    if layout.secrets.is_dir():
        for path in sorted(layout.secrets.iterdir()):
            if path.is_file():
                yield path, 0o600
    if settings.alerts_file is not None and settings.alerts_file.is_file():
        yield settings.alerts_file, 0o600


def fix_permissions(settings: Settings, dry_run: bool = True) -> PermissionFixes:
    """Take group and other bits off the secrets, NEXUS_HOME, the backups and OpenCode's data."""
    changes, errors = [], []
    for path, allowed in _wanted_modes(settings):
        mode = stat.S_IMODE(path.stat().st_mode)
        if not mode & ~allowed & 0o777:
            continue
        new = mode & allowed
        changes.append(f"chmod {new:o} {path} (was {mode:o})")
        if not dry_run:
            try:
                path.chmod(new)
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror}")
    return PermissionFixes(dry_run=dry_run, changes=changes, errors=errors)


def audit_packages(
    settings: Settings,
    out_dir: str = "",
    vulnerability_service: str = "pypi",
    *,
    dry_run: bool = True,
    enabled: bool = True,
) -> AuditReport | None:
    """The dependency audit (None when not ``enabled``), into ``out_dir``; by default a new
    ``$NEXUS_HOME/audits/<time>``, or on a dry run a temporary folder (NEXUS_HOME untouched)."""
    if not enabled:
        return None
    if vulnerability_service not in ("pypi", "osv"):
        raise SecurityError(
            f"vulnerability_service={vulnerability_service!r} is not a vulnerability service",
            hint="use pypi or osv",
        )
    if out_dir:
        folder = Path(out_dir)
    elif dry_run:
        folder = Path(tempfile.mkdtemp(prefix="nexus-ops-audit-"))
    else:
        folder = audit_folder(settings)
    return run_audit(folder, vulnerability_service=vulnerability_service)  # type: ignore[arg-type]


def audit_folder(settings: Settings) -> Path:
    return Layout(settings.home).home / "audits" / time.strftime("%Y%m%d-%H%M%S")


def security_verdict(
    posture: PostureReport,
    audit_report: AuditReport | None,
    fixes: PermissionFixes,
    after: PostureReport | None = None,
    *,
    dry_run: bool,
) -> Verdict:
    """Healthy when no posture item fails (after the repair) and no audit tool fails."""
    final = after or posture
    findings = [
        Finding(
            check=item.name,
            ok=item.status == "pass",
            summary=item.summary,
            severity=_FINDING_SEVERITY.get(item.status, "error"),
        )
        for item in final.items
    ]
    for result in audit_report.results if audit_report else []:
        findings.append(
            Finding(
                check=result.tool,
                ok=result.status == "pass",
                summary=result.summary,
                severity=_FINDING_SEVERITY.get(result.status, "error"),
            )
        )
    failing = [f for f in findings if not f.ok and f.severity == "error"]
    healthy = not failing and not fixes.errors
    if healthy:
        summary = "secure" + (" after fixing permissions" if fixes.done else "")
    else:
        summary = "; ".join(f"{f.check}: {f.summary}" for f in failing) or "; ".join(fixes.errors)
        if dry_run and fixes.needed:
            summary += " (dry run; set dry_run=False to fix the permissions)"
    action = Action(
        name="fix permissions",
        done=fixes.done,
        ok=not fixes.errors,
        summary="; ".join(fixes.changes) if fixes.changes else "nothing to change",
    )
    return Verdict(
        runbook="security_audit",
        healthy=healthy,
        dry_run=dry_run,
        summary=summary,
        findings=findings,
        actions=[action],
    )


def record_verdict(
    posture: PostureReport,
    audit_report: AuditReport | None,
    fixes: PermissionFixes,
    after: PostureReport | None = None,
    *,
    dry_run: bool,
) -> Verdict:
    """Build the verdict and display it as the run's record (JSON and text)."""
    return security_verdict(posture, audit_report, fixes, after, dry_run=dry_run).show()
