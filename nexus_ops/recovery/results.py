"""What a runbook cell shows: a check (diagnosis) or a step (remediation), and the verdict.

Both render as a short Markdown table in the notebook, and both turn into the
structured verdict the last cell records.

>>> check = Check(name="port", ok=False, summary="held by nginx (pid 7)")
>>> check.finding().ok, "held by nginx" in check._repr_markdown_()
(False, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from nexus_ops.models import Frozen
from nexus_ops.runbooks.verdict import Action, Finding, Verdict

Severity = Literal["error", "warning"]


def _table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    for key, value in rows.items():
        text = str(value).replace("|", "\\|").replace("\n", "<br>")
        lines.append(f"| {key} | {text} |")
    return "\n".join(lines)


class Check(Frozen):
    """One diagnosis: did it pass, in a sentence, with details to look at."""

    name: str
    ok: bool
    summary: str
    severity: Severity = Field("error", description="warning: reported, not unhealthy")
    details: dict[str, Any] = Field(default_factory=dict)

    def finding(self) -> Finding:
        return Finding(check=self.name, ok=self.ok, summary=self.summary, severity=self.severity)

    def _repr_markdown_(self) -> str:
        mark = "OK" if self.ok else self.severity.upper()
        return f"**{self.name}: {mark}**: {self.summary}\n\n" + _table(self.details)


class Step(Frozen):
    """One remediation step: done or not (and why), and whether it worked."""

    name: str
    done: bool
    ok: bool = True
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)

    def action(self) -> Action:
        return Action(name=self.name, done=self.done, summary=self.summary, ok=self.ok)

    def _repr_markdown_(self) -> str:
        state = ("done" if self.ok else "FAILED") if self.done else "not done"
        return f"**{self.name}: {state}**: {self.summary}\n\n" + _table(self.details)


def verdict(
    runbook: str,
    found: Sequence[Check],
    done: Sequence[Step] = (),
    after: Sequence[Check] = (),
    *,
    dry_run: bool,
) -> Verdict:
    """Healthy when every error-level check passes and no step failed; a check ``after``
    the repair replaces the one of the same name found before it."""
    final = list({c.name: c for c in [*found, *after]}.values())
    failing = [c for c in final if not c.ok and c.severity == "error"]
    failed_steps = [s for s in done if s.done and not s.ok]
    healthy = not failing and not failed_steps
    if healthy:
        summary = "healthy" + (
            f" after: {', '.join(s.name for s in done if s.done)}"
            if any(s.done for s in done)
            else ""
        )
    else:
        problems = [f"{c.name}: {c.summary}" for c in failing]
        problems += [f"{s.name} failed: {s.summary}" for s in failed_steps]
        summary = "; ".join(problems)
        if dry_run:
            planned = [s.name for s in done if not s.done and s.summary.startswith("would")]
            summary += (
                f" (dry run; set dry_run=False to {', '.join(planned)})"
                if planned
                else " (dry run)"
            )
    findings = [c.finding() for c in found]
    before = {c.name: c for c in found}
    for check in after:  # a re-check repeats a finding unless something changed
        earlier = before.get(check.name)
        if earlier is None or earlier.ok != check.ok or earlier.summary != check.summary:
            name = f"{check.name} (after)" if earlier else check.name
            findings.append(check.finding().model_copy(update={"check": name}))
    return Verdict(
        runbook=runbook,
        healthy=healthy,
        dry_run=dry_run,
        summary=summary,
        findings=findings,
        actions=[s.action() for s in done],
    )


def record_verdict(
    runbook: str,
    found: Sequence[Check],
    done: Sequence[Step] = (),
    after: Sequence[Check] = (),
    *,
    dry_run: bool,
) -> Verdict:
    """Build the verdict and display it as the run's record (JSON and text)."""
    return verdict(runbook, found, done, after, dry_run=dry_run).show()
