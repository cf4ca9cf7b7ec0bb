"""The dependency audit: known vulnerabilities, a bill of materials, licences; into one folder.

Three tools run side by side on a Python environment (this one by default):

* ``pip-audit`` writes ``vulnerabilities.json``. Offline, or when the service
  answers for no package, the result is ``unreachable`` (vulnerabilities
  unknown), never a crash;
* ``cyclonedx-py environment`` writes ``sbom.cdx.json`` (CycloneDX JSON);
* ``pip-licenses`` writes ``licences.json``, checked against the licences
  nexus-ops may ship with (:mod:`nexus_ops.security.licences`).

Every file is written to a temporary folder first and moved into place, then
``summary.json`` and ``report.md`` describe the run. The tools come with the
``security`` extra (``pip install 'nexus-ops[security]'``).

>>> # report = run_audit(Path("audit")); report.ok, print(report.text())
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from nexus_ops.errors import SecurityError
from nexus_ops.models import Frozen
from nexus_ops.paths import atomic_write
from nexus_ops.redact import redact
from nexus_ops.security.licences import ALLOWED, is_unknown, licence_allowed

ToolStatus = Literal["pass", "warn", "fail", "unreachable", "missing", "error"]
_OFFLINE = re.compile(
    r"ConnectionError|ConnectTimeout|NewConnectionError|Max retries|Name or service not known|"
    r"Temporary failure in name resolution|Failed to resolve|Network is unreachable|"
    r"timed out|Connection refused|nodename nor servname",
    re.IGNORECASE,
)
SELF = {"nexus-ops", "nexus_ops"}
_MARK = {
    "pass": "PASS",
    "warn": "WARN",
    "fail": "FAIL",
    "unreachable": "UNKNOWN",
    "missing": "MISSING",
    "error": "ERROR",
}


class ToolResult(Frozen):
    """What one tool found, and the files it wrote (names inside the audit folder)."""

    tool: str
    status: ToolStatus
    summary: str
    files: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    details: dict[str, Any] = Field(default_factory=dict)


class AuditReport(Frozen):
    """The three results; ``ok`` unless a tool found a problem or failed to run."""

    out_dir: str
    time: float
    python: str
    results: list[ToolResult]

    @property
    def ok(self) -> bool:
        return all(r.status in ("pass", "warn", "unreachable") for r in self.results)

    def text(self) -> str:
        lines = [f"dependency audit in {self.out_dir}: {'PASS' if self.ok else 'FAIL'}"]
        for result in self.results:
            files = f" -> {', '.join(result.files)}" if result.files else ""
            lines.append(f"  [{_MARK[result.status]}] {result.tool}: {result.summary}{files}")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        rows = ["| tool | status | finding | files |", "|---|---|---|---|"]
        for r in self.results:
            summary = r.summary.replace("|", "\\|")
            rows.append(f"| {r.tool} | {_MARK[r.status]} | {summary} | {', '.join(r.files)} |")
        verdict = "PASS" if self.ok else "FAIL"
        return f"**Dependency audit: {verdict}** ({self.out_dir})\n\n" + "\n".join(rows)


def run_audit(
    out_dir: Path,
    python: str = sys.executable,
    vulnerability_service: Literal["pypi", "osv"] = "pypi",
    timeout: float = 900.0,
) -> AuditReport:
    """Run the three tools on ``python``'s environment; write their files to ``out_dir``."""
    out_dir = out_dir.expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SecurityError(
            f"--out {out_dir} cannot be created ({exc.strerror})",
            hint="give a folder you can write to",
        ) from exc
    started = time.time()
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".audit-") as scratch:
        work = Path(scratch)
        jobs: list[Callable[[], ToolResult]] = [
            lambda: vulnerabilities(python, work, vulnerability_service, timeout),
            lambda: sbom(python, work, timeout),
            lambda: licences(python, work, timeout),
        ]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            results = list(pool.map(lambda job: job(), jobs))
        for result in results:
            for name in result.files:
                (work / name).replace(out_dir / name)
    report = AuditReport(out_dir=str(out_dir), time=started, python=python, results=results)
    atomic_write(out_dir / "summary.json", report.model_dump_json(indent=2).encode())
    atomic_write(out_dir / "report.md", (report._repr_markdown_() + "\n").encode())
    return report


# ---- running a tool ------------------------------------------------------------------------


class _Run(Frozen):
    code: int | None
    stdout: str
    stderr: str
    seconds: float


def _run(argv: list[str], timeout: float) -> _Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return _Run(code=None, stdout="", stderr=f"took longer than {timeout:g} s", seconds=timeout)
    except OSError as exc:
        return _Run(code=None, stdout="", stderr=str(exc), seconds=0.0)
    return _Run(
        code=done.returncode,
        stdout=done.stdout,
        stderr=done.stderr,
        seconds=round(time.monotonic() - started, 2),
    )


def _not_run(tool: str, module: str, run: _Run) -> ToolResult | None:
    """The result of a tool that is not installed or did not run at all."""
    if f"No module named {module}" in run.stderr:
        return ToolResult(
            tool=tool,
            status="missing",
            summary=f"{tool} is not installed in this environment; "
            "`pip install 'nexus-ops[security]'` installs it",
        )
    if run.code is None:
        return ToolResult(tool=tool, status="error", summary=f"{tool} did not finish: {run.stderr}")
    return None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return redact(lines[-1][:300]) if lines else "(no output)"


# ---- the three tools ------------------------------------------------------------------------


def vulnerabilities(python: str, work: Path, service: str, timeout: float) -> ToolResult:
    """pip-audit: known vulnerabilities of every installed distribution."""
    tool, name = "pip-audit", "vulnerabilities.json"
    argv = [python, "-m", "pip_audit", "--format", "json", "--output", str(work / name)]
    argv += ["--progress-spinner", "off", "--desc", "on", "--skip-editable"]
    argv += ["--vulnerability-service", service, "--timeout", "15"]
    run = _run(argv, timeout)
    if (early := _not_run(tool, "pip_audit", run)) is not None:
        return early
    try:
        found = json.loads((work / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        if _OFFLINE.search(run.stderr):
            return ToolResult(
                tool=tool,
                status="unreachable",
                summary="vulnerability service unreachable; vulnerabilities unknown "
                f"({_last_line(run.stderr)})",
                seconds=run.seconds,
            )
        return ToolResult(
            tool=tool,
            status="error",
            summary=f"pip-audit failed (exit {run.code}): {_last_line(run.stderr)}",
            seconds=run.seconds,
        )
    return _vulnerability_result(found, service, run.seconds, [name])


def _vulnerability_result(
    found: dict[str, Any], service: str, seconds: float, files: list[str]
) -> ToolResult:
    deps = [d for d in found.get("dependencies", []) if d.get("name", "").lower() not in SELF]
    audited = [d for d in deps if "skip_reason" not in d]
    vulnerable = {
        d["name"]: [v.get("id") for v in d.get("vulns", [])] for d in audited if d.get("vulns")
    }
    details = {
        "service": service,
        "dependencies": len(deps),
        "audited": len(audited),
        "skipped": len(deps) - len(audited),
        "vulnerable": vulnerable,
    }
    tool = "pip-audit"
    if deps and not audited:
        return ToolResult(
            tool=tool,
            status="unreachable",
            summary=f"vulnerability service unreachable: {service} answered for none of the "
            f"{len(deps)} packages; vulnerabilities unknown (check the network or the service)",
            files=files,
            seconds=seconds,
            details=details,
        )
    skipped = f"; {details['skipped']} not audited" if details["skipped"] else ""
    if vulnerable:
        ids = sum(len(v) for v in vulnerable.values())
        return ToolResult(
            tool=tool,
            status="fail",
            summary=f"{ids} known vulnerabilities in {', '.join(sorted(vulnerable))}{skipped}; "
            "upgrade to the fixed versions in vulnerabilities.json",
            files=files,
            seconds=seconds,
            details=details,
        )
    return ToolResult(
        tool=tool,
        status="warn" if skipped else "pass",
        summary=f"no known vulnerabilities in {len(audited)} packages{skipped}",
        files=files,
        seconds=seconds,
        details=details,
    )


def sbom(python: str, work: Path, timeout: float) -> ToolResult:
    """cyclonedx-py: the software bill of materials of the environment (CycloneDX JSON)."""
    tool, name = "cyclonedx-py", "sbom.cdx.json"
    argv = [python, "-m", "cyclonedx_py", "environment", "--output-format", "JSON"]
    argv += ["--output-file", str(work / name), python]
    run = _run(argv, timeout)
    if (early := _not_run(tool, "cyclonedx_py", run)) is not None:
        return early
    try:
        document = json.loads((work / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ToolResult(
            tool=tool,
            status="error",
            summary=f"cyclonedx-py failed (exit {run.code}): {_last_line(run.stderr)}",
            seconds=run.seconds,
        )
    components = len(document.get("components", []))
    spec = document.get("specVersion", "?")
    return ToolResult(
        tool=tool,
        status="pass",
        summary=f"CycloneDX {spec} SBOM of {components} components",
        files=[name],
        seconds=run.seconds,
        details={"components": components, "spec_version": spec},
    )


def licences(python: str, work: Path, timeout: float) -> ToolResult:
    """pip-licenses: every package's licence, checked against the allowed ones."""
    tool, name = "pip-licenses", "licences.json"
    argv = [python, "-m", "piplicenses", "--format=json", "--with-urls"]
    argv += [f"--output-file={work / name}"]
    run = _run(argv, timeout)
    if (early := _not_run(tool, "piplicenses", run)) is not None:
        return early
    try:
        rows = json.loads((work / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ToolResult(
            tool=tool,
            status="error",
            summary=f"pip-licenses failed (exit {run.code}): {_last_line(run.stderr)}",
            seconds=run.seconds,
        )
    return _licence_result(rows, run.seconds, [name])


def _licence_result(rows: list[dict[str, str]], seconds: float, files: list[str]) -> ToolResult:
    others = [r for r in rows if r.get("Name", "").lower() not in SELF]
    unknown = sorted(r["Name"] for r in others if is_unknown(r.get("License", "")))
    refused = sorted(
        f"{r['Name']} ({r.get('License', '')})"
        for r in others
        if not is_unknown(r.get("License", "")) and not licence_allowed(r.get("License", ""))
    )
    details = {"packages": len(others), "not_allowed": refused, "unknown": unknown,
               "allowed": list(ALLOWED)}  # fmt: skip
    if refused:
        return ToolResult(
            tool="pip-licenses",
            status="fail",
            summary=f"{len(refused)} package(s) under licences not allowed: {', '.join(refused)}",
            files=files,
            seconds=seconds,
            details=details,
        )
    tail = f"; unknown licence: {', '.join(unknown)}" if unknown else ""
    return ToolResult(
        tool="pip-licenses",
        status="warn" if unknown else "pass",
        summary=f"{len(others)} packages, every licence allowed{tail}",
        files=files,
        seconds=seconds,
        details=details,
    )
