"""A run as a person reads it: its executed notebook as one HTML page.

The notebook is the audit record of a run; before it is shown, every cell's source
and output goes through :func:`nexus_ops.redact.redact` with the host's secrets,
widget state (megabytes of plotly.js) is dropped, and nbconvert sanitises the
HTML of markdown cells and outputs (no scripts, no event handlers).

>>> # html = notebook_html(Path("runs/20261201T101500Z-backup-1a2b.ipynb"), ["hunter2"])
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nbconvert import HTMLExporter

from nexus_ops.redact import redact
from nexus_ops.runbooks.nbio import read_notebook

def notebook_html(path: Path, secrets: Iterable[str] = ()) -> str:
    """The executed notebook at ``path`` as one sanitised HTML page, secrets masked."""
    notebook = read_notebook(path)
    masked = [s for s in secrets if s]
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        cell.source = redact(str(cell.source), masked)
        for output in cell.get("outputs", []):
            _scrub_output(output, masked)
    exporter = HTMLExporter(template_name="lab", sanitize_html=True)  # type: ignore[no-untyped-call]
    body, _ = exporter.from_notebook_node(notebook)
    return str(body)


def _scrub_output(output: Any, secrets: list[str]) -> None:
    if "text" in output:
        output["text"] = redact(str(output["text"]), secrets)
    if "traceback" in output:
        output["traceback"] = [redact(str(line), secrets) for line in output["traceback"]]
    if "evalue" in output:
        output["evalue"] = redact(str(output["evalue"]), secrets)
    data = output.get("data", {})
    data.pop("application/vnd.jupyter.widget-view+json", None)
    for mime, value in list(data.items()):
        data[mime] = _scrub_value(value, secrets)


def _scrub_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, list):
        return [_scrub_value(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v, secrets) for k, v in value.items()}
    return value
