"""The runbook catalog: every notebook of the runbooks folder, its purpose and parameters.

Parameters are read with papermill's own inspection (``papermill.inspect_notebook``),
so the catalog shows exactly what papermill would inject. A runbook must declare a
type for each parameter (``name: type = default  # help``).

Where the runbooks are (first found wins):

1. ``NEXUS_RUNBOOKS_DIR``;
2. ``runbooks/`` beside the package in a source checkout (also an editable install);
3. ``<prefix>/share/nexus-ops/runbooks``, where a wheel installs them (pyproject's
   ``data-files``), for the interpreter's prefix and the user scheme.

>>> # catalog = RunbookCatalog.locate(); [r.name for r in catalog.list()]
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

import papermill

from nexus_ops.errors import RunbookError, RunbookNotFound
from nexus_ops.runbooks.models import ParamSpec, Runbook
from nexus_ops.runbooks.nbio import read_notebook
from nexus_ops.runbooks.prose import purpose
from nexus_ops.runbooks.params import check, declared_range, parse_default, supported, within

INSTALLED = Path("share") / "nexus-ops" / "runbooks"


def candidate_folders(configured: Path | None = None) -> list[Path]:
    """Where runbooks are looked for, in order."""
    folders = [] if configured is None else [configured]
    folders.append(Path(__file__).resolve().parents[2] / "runbooks")
    for scheme in (None, "posix_user"):
        try:
            data = sysconfig.get_path("data", scheme) if scheme else sysconfig.get_path("data")
        except KeyError:
            continue
        folders.append(Path(data) / INSTALLED)
    return folders


def locate(configured: Path | None = None) -> Path:
    """The runbooks folder (see the module's docstring for the order)."""
    if configured is not None and not configured.is_dir():
        raise RunbookError(
            f"NEXUS_RUNBOOKS_DIR={configured} is not a folder",
            hint="point it at a folder of runbook notebooks, or unset it",
        )
    for folder in candidate_folders(configured):
        if folder.is_dir() and any(folder.glob("*.ipynb")):
            return folder
    raise RunbookError(
        "no runbooks folder found (looked in: "
        + ", ".join(str(f) for f in candidate_folders(configured))
        + ")",
        hint="reinstall nexus-ops, or set NEXUS_RUNBOOKS_DIR to the runbooks/ of a checkout",
    )


class RunbookCatalog:
    """The runbooks of one folder.

    >>> import tempfile
    >>> RunbookCatalog(Path(tempfile.mkdtemp())).list()
    []
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def locate(cls, configured: Path | None = None) -> RunbookCatalog:
        return cls(locate(configured))

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.ipynb") if not p.name.startswith("."))

    def list(self) -> list[Runbook]:
        return [self.get(name) for name in self.names()]

    def get(self, name: str) -> Runbook:
        path = self.folder / f"{name}.ipynb"
        if "/" in name or not path.is_file():
            raise RunbookNotFound(
                f"there is no runbook {name!r}",
                hint=f"the runbooks are: {', '.join(self.names()) or 'none'} (in {self.folder})",
            )
        return read_runbook(path)


def read_runbook(path: Path) -> Runbook:
    """A runbook's title, description and typed parameters."""
    try:
        notebook = read_notebook(path)
        inferred: dict[str, dict[str, Any]] = papermill.inspect_notebook(str(path))
    except Exception as exc:  # nbformat and papermill raise many kinds
        raise RunbookError(f"cannot read the runbook {path}: {exc}") from exc
    title, description = _describe(notebook)
    parameters = []
    for name, info in inferred.items():
        type_name = str(info.get("inferred_type_name") or "None")
        if not supported(type_name):
            raise RunbookError(
                f"runbook {path.stem}: parameter {name!r} has no supported type ({type_name})",
                hint="declare it as `name: bool|int|float|str|list[str] = default  # help`",
            )
        parameters.append(_spec(path, name, type_name, info))
    return Runbook(
        name=path.stem,
        title=title,
        description=description,
        purpose=purpose(description),
        path=str(path),
        parameters=parameters,
    )


def _spec(path: Path, name: str, type_name: str, info: dict[str, Any]) -> ParamSpec:
    """One parameter; its declared range must be numbers, and hold its default."""
    help_text = str(info.get("help") or "")
    default = parse_default(str(info.get("default")))
    try:
        low, high = declared_range(type_name, help_text)
        spec = ParamSpec(
            name=name, type=type_name, default=default, help=help_text, minimum=low, maximum=high
        )
        if low is not None or high is not None:
            within(spec, check(type_name, default))
    except ValueError as exc:
        raise RunbookError(
            f"runbook {path.stem}: parameter {name!r} ({type_name} = {default!r}): {exc}",
            hint="end a number's comment with its range, [low..high] (an end may stay "
            "open: [1..]), that holds the default",
        ) from exc
    return spec


def _describe(notebook: Any) -> tuple[str, str]:
    """The first markdown cell's heading, and its other paragraphs (blank lines kept)."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            lines = [line.strip() for line in str(cell.source).splitlines()]
            title = next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("#")), "")
            paragraphs: list[list[str]] = [[]]
            for line in lines:
                if not line or line.startswith("#"):
                    paragraphs.append([])
                else:
                    paragraphs[-1].append(line)
            return title, "\n\n".join(" ".join(p) for p in paragraphs if p)
    return "", ""
