"""Value types of runbooks: a runbook and its parameters (no papermill needed to read them).

>>> ParamSpec(name="dry_run", type="bool", default=True).type
'bool'
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nexus_ops.models import Frozen


class ParamSpec(Frozen):
    """One parameter of a runbook, as its ``parameters`` cell declares it."""

    name: str
    type: str = Field(description="bool, int, float, str or list[...] of one of them")
    default: Any = None
    help: str = ""


class Runbook(Frozen):
    """One runbook: its name (the notebook's stem), what it is for, and its parameters."""

    name: str
    title: str
    description: str = ""
    path: str
    parameters: list[ParamSpec] = Field(default_factory=list)

    def spec(self) -> dict[str, ParamSpec]:
        return {p.name: p for p in self.parameters}
