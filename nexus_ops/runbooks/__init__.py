"""Runbooks: parameterised notebooks that diagnose, repair when told to, and leave a record.

* ``catalog``: where the runbooks are, their purpose and typed parameters
  (read with ``papermill.inspect_notebook``)
* ``params``: checking a caller's parameters against the declared types
* ``engine``: running one with papermill (lock, timeout, progress, run index)
* ``verdict``: the structured outcome a runbook's last cell records
* ``models``: the value types; ``service``: runbooks as the agent serves them

Names are loaded on first use: papermill takes a second to import, and the value
types (for the client and the CLI) need none of it.

>>> from nexus_ops.runbooks import ParamSpec, validate
>>> validate({"dry_run": ParamSpec(name="dry_run", type="bool")}, {"dry_run": "no"},
...          from_strings=True)
{'dry_run': False}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_ops.lazy import lazy_exports

if TYPE_CHECKING:
    from nexus_ops.runbooks.catalog import RunbookCatalog, locate
    from nexus_ops.runbooks.engine import PreparedRun, RunbookRunner
    from nexus_ops.runbooks.models import ParamSpec, Runbook
    from nexus_ops.runbooks.params import validate
    from nexus_ops.runbooks.service import RunbookService
    from nexus_ops.runbooks.verdict import VERDICT_MIME, Action, Finding, Verdict, find_verdict

_HOMES = {
    "catalog": ["RunbookCatalog", "locate"],
    "engine": ["PreparedRun", "RunbookRunner"],
    "models": ["ParamSpec", "Runbook"],
    "params": ["validate"],
    "service": ["RunbookService"],
    "verdict": ["VERDICT_MIME", "Action", "Finding", "Verdict", "find_verdict"],
}

__all__ = [
    "VERDICT_MIME",
    "Action",
    "Finding",
    "ParamSpec",
    "PreparedRun",
    "Runbook",
    "RunbookCatalog",
    "RunbookRunner",
    "RunbookService",
    "Verdict",
    "find_verdict",
    "locate",
    "validate",
]


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())
