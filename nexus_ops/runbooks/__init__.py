"""Runbooks: parameterised notebooks that diagnose, repair when told to, and leave a record.

* ``catalog``: where the runbooks are, their purpose and typed parameters
  (read with ``papermill.inspect_notebook``)
* ``params``: checking a caller's parameters against the declared types
* ``engine``: running one with papermill (lock, timeout, progress, run index)
* ``verdict``: the structured outcome a runbook's last cell records

>>> from nexus_ops.runbooks import ParamSpec, validate
>>> validate({"dry_run": ParamSpec(name="dry_run", type="bool")}, {"dry_run": "no"},
...          from_strings=True)
{'dry_run': False}
"""

from __future__ import annotations

from nexus_ops.runbooks.catalog import Runbook, RunbookCatalog, locate
from nexus_ops.runbooks.engine import PreparedRun, RunbookRunner
from nexus_ops.runbooks.params import ParamSpec, validate
from nexus_ops.runbooks.verdict import VERDICT_MIME, Action, Finding, Verdict, find_verdict

__all__ = [
    "VERDICT_MIME",
    "Action",
    "Finding",
    "ParamSpec",
    "PreparedRun",
    "Runbook",
    "RunbookCatalog",
    "RunbookRunner",
    "Verdict",
    "find_verdict",
    "locate",
    "validate",
]
