"""Security by default: token and address rules, the posture report, the dependency audit.

* ``tokens``: what counts as loopback, and as a strong token (the agent uses it)
* ``posture``: ``nexus-ops security check``: each item passes, warns or fails
* ``audit``: ``nexus-ops security audit``: pip-audit, CycloneDX SBOM, pip-licenses
* ``licences``: which licences nexus-ops may ship with
* ``runbook``: the permission repair and the verdict of the ``security_audit`` runbook

The names are loaded on first use, so that the agent's start does not pay for
the runbook machinery.

>>> from nexus_ops import security
>>> security.token_problem("x" * 40)
'uses only 1 distinct characters; use a random one'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_ops.lazy import lazy_exports

if TYPE_CHECKING:
    from nexus_ops.security.audit import AuditReport, ToolResult, run_audit
    from nexus_ops.security.licences import licence_allowed
    from nexus_ops.security.posture import (
        PostureItem,
        PostureReport,
        posture_check,
        readable_by_others,
    )
    from nexus_ops.security.runbook import (
        PermissionFixes,
        audit_packages,
        fix_permissions,
        record_verdict,
        security_verdict,
    )
    from nexus_ops.security.tokens import is_loopback, require_strong_token, token_problem

_HOMES = {
    "audit": ["AuditReport", "ToolResult", "run_audit"],
    "licences": ["licence_allowed"],
    "posture": ["PostureItem", "PostureReport", "posture_check", "readable_by_others"],
    "runbook": [
        "PermissionFixes",
        "audit_packages",
        "fix_permissions",
        "record_verdict",
        "security_verdict",
    ],
    "tokens": ["is_loopback", "require_strong_token", "token_problem"],
}
__all__ = [
    "AuditReport",
    "PermissionFixes",
    "PostureItem",
    "PostureReport",
    "ToolResult",
    "audit_packages",
    "fix_permissions",
    "is_loopback",
    "licence_allowed",
    "posture_check",
    "readable_by_others",
    "record_verdict",
    "require_strong_token",
    "run_audit",
    "security_verdict",
    "token_problem",
]


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())
