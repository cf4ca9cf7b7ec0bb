"""Reading and editing notebooks (nbformat), typed for the rest of the package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat


def read_notebook(path: Path | str) -> Any:
    """A notebook as nbformat's NotebookNode (version 4)."""
    return nbformat.read(str(path), as_version=4)  # type: ignore[no-untyped-call]


def error_output(ename: str, evalue: str) -> Any:
    """An ``error`` output, as a failed cell carries it."""
    return nbformat.v4.new_output(  # type: ignore[no-untyped-call]
        "error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"]
    )
