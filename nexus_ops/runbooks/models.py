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
    minimum: int | float | None = Field(None, description="smallest value (numbers and their lists)")
    maximum: int | float | None = Field(None, description="largest value (numbers and their lists)")

    @property
    def kind(self) -> str:
        """The type and its range, as in ``int in [1..10000]``."""
        if self.minimum is None and self.maximum is None:
            return self.type
        low, high = ("" if end is None else number(end) for end in (self.minimum, self.maximum))
        return f"{self.type} in [{low}..{high}]"


class Runbook(Frozen):
    """One runbook: its name (the notebook's stem), what it is for, and its parameters."""

    name: str
    title: str
    description: str = Field("", description="Markdown, paragraphs apart by blank lines")
    purpose: str = Field("", description="What it is for, in one plain line")
    path: str
    parameters: list[ParamSpec] = Field(default_factory=list)

    def spec(self) -> dict[str, ParamSpec]:
        return {p.name: p for p in self.parameters}


def number(value: float) -> str:
    """A bound as the operator wrote it: ``8760`` and ``0.1``, an int in full."""
    return str(value) if isinstance(value, int) else f"{value:g}"
