"""The verdict a runbook's last cell records: what was found, what was done, healthy or not.

The cell displays the verdict as JSON under its own MIME type beside a readable
text, so that the executed notebook (the audit record) carries it and the run
engine can copy it into the index.

>>> verdict = Verdict(runbook="demo", healthy=True, dry_run=True, summary="all good")
>>> VERDICT_MIME in verdict.bundle()
True
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nexus_ops.models import Frozen

VERDICT_MIME = "application/vnd.nexus-ops.verdict+json"


class Finding(Frozen):
    """One check of a diagnosis."""

    check: str
    ok: bool
    summary: str
    severity: str = Field("error", description="error (unhealthy if not ok) or warning")


class Action(Frozen):
    """One remediation step: done, or only planned (dry run, or nothing to do)."""

    name: str
    done: bool
    summary: str
    ok: bool = True


class Verdict(Frozen):
    """The outcome of a runbook run."""

    runbook: str
    healthy: bool
    dry_run: bool
    summary: str
    findings: list[Finding] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=list)

    def text(self) -> str:
        state = "HEALTHY" if self.healthy else "UNHEALTHY"
        mode = "dry run" if self.dry_run else "repairs allowed"
        lines = [f"{self.runbook}: {state} ({mode}): {self.summary}"]
        lines += [
            f"  [{'ok' if f.ok else f.severity}] {f.check}: {f.summary}" for f in self.findings
        ]
        lines += [
            f"  -> {a.name}: {'done' if a.done else 'not done'}: {a.summary}" for a in self.actions
        ]
        return "\n".join(lines)

    def bundle(self) -> dict[str, Any]:
        """The display data of the verdict (for IPython's ``display(..., raw=True)``)."""
        return {VERDICT_MIME: self.model_dump(mode="json"), "text/plain": self.text()}

    def show(self) -> Verdict:
        """Display the verdict as the run's record (JSON and text); printed outside Jupyter."""
        try:
            from IPython.display import display
        except ImportError:
            print(self.text())
            return self
        display(self.bundle(), raw=True)  # type: ignore[no-untyped-call]
        return self


def find_verdict(notebook: Any) -> Verdict | None:
    """The last verdict recorded in an executed notebook, if any."""
    for cell in reversed(notebook.cells):
        for output in reversed(cell.get("outputs", [])):
            data = output.get("data", {})
            if VERDICT_MIME in data:
                return Verdict.model_validate(data[VERDICT_MIME])
    return None
