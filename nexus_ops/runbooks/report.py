"""A run as a person reads it: its executed notebook as one HTML page.

The notebook is the audit record of a run; before it is shown, every cell's source
and output goes through :func:`nexus_ops.redact.redact` with the host's secrets,
widget state (megabytes of plotly.js) is dropped, and the HTML of markdown cells and
outputs is sanitised: the tags of prose and tables kept (nbconvert's own filter shows
``<p>``, headings and table heads as text), scripts and event handlers escaped or
dropped. The page itself loads no script (no MathJax, require.js or mermaid from a CDN):
it is read in a sandboxed frame, offline.

>>> # html = notebook_html(Path("runs/20261201T101500Z-backup-1a2b.ipynb"), ["hunter2"])
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import bleach
from jinja2 import DictLoader
from nbconvert import HTMLExporter

from nexus_ops.redact import redact
from nexus_ops.runbooks.nbio import read_notebook

# JupyterLab's page without the blocks that load scripts; on a phone, lines wrap.
PAGE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style>
/* A narrow window (a phone): long code lines and table cells wrap, nothing is cut. */
@media (max-width: 700px) {
  .jp-Notebook pre { white-space: pre-wrap; overflow-wrap: anywhere; }
  .jp-Notebook td, .jp-Notebook th { overflow-wrap: anywhere; }
  .jp-Notebook td:first-child { overflow-wrap: normal; }  /* a key: its words whole */
}
</style>
{%- endblock extra_css -%}
"""
TAGS = frozenset(
    {"a", "abbr", "b", "blockquote", "br", "caption", "code", "dd", "del", "details", "div"}
    | {"dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li"}
    | {"ol", "p", "pre", "s", "span", "strong", "sub", "summary", "sup", "table", "tbody"}
    | {"td", "tfoot", "th", "thead", "tr", "ul"}
)
ATTRIBUTES = {
    "*": ["class", "id", "title"],
    "a": ["href", "class", "id", "title"],
    "img": ["src", "alt", "width", "height"],
    "td": ["colspan", "rowspan", "align"],
    "th": ["colspan", "rowspan", "align"],
}

def notebook_html(path: Path, secrets: Iterable[str] = ()) -> str:
    """The executed notebook at ``path`` as one sanitised HTML page, secrets masked."""
    notebook = read_notebook(path)
    masked = [s for s in secrets if s]
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        cell.source = redact(str(cell.source), masked)
        for output in cell.get("outputs", []):
            _scrub_output(output, masked)
    exporter = HTMLExporter(  # type: ignore[no-untyped-call]
        template_name="lab",
        template_file="nexus-run.html.j2",
        extra_loaders=[DictLoader({"nexus-run.html.j2": PAGE})],
        sanitize_html=True,
    )
    exporter.register_filter("clean_html", clean_html)  # type: ignore[no-untyped-call]
    body, _ = exporter.from_notebook_node(notebook)
    return str(body)


def clean_html(fragment: str | bytes) -> str:
    """HTML of a notebook with the tags of prose, code and tables kept; any other tag
    (a script, a style, a form) shown as text, event handlers and ``javascript:`` gone.

    >>> clean_html("<p>a <b>b</b></p><script>x()</script><img src=x onerror=y()>")
    '<p>a <b>b</b></p>&lt;script&gt;x()&lt;/script&gt;<img src="x">'
    """
    text = fragment.decode() if isinstance(fragment, bytes) else str(fragment)
    return str(
        bleach.clean(
            text, tags=TAGS, attributes=ATTRIBUTES, protocols={"http", "https", "mailto", "data"}
        )
    )


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
