"""Plotly FigureWidgets that share one copy of plotly.js on the page.

A plotly ``FigureWidget`` is an anywidget whose state carries its whole front-end
bundle (about 5 MB). Nine of them on a page send 45 MB over the kernel's websocket
and make the browser compile the bundle nine times (tens of seconds, measured).
Under ``nexus-ops console`` the bundle is served once as a static file by Voila
(:data:`ASSET`, copied beside the notebook) and every figure's module is a
two-line shim that imports it by URL: the browser fetches and compiles it once.
Anywhere else (JupyterLab, a plain ``voila`` run) the figures carry the bundle as
plotly ships them.

>>> shim("/voila/files/x.js").splitlines()[0]
'const bundle = await import(new URL("/voila/files/x.js", location.href).href);'
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import plotly
import plotly.graph_objects as go

ASSET = f"plotly-widget-{plotly.__version__}.js"


def plotly_bundle() -> Path:
    """The front-end bundle of plotly's FigureWidget, as installed."""
    return Path(plotly.__file__).parent / "package_data" / "widgetbundle.js"


def asset_url(cwd: Path | None = None, environ: dict[str, str] | None = None) -> str | None:
    """Where the page finds the shared bundle, or None when it is not served.

    Voila tells its kernels its base URL (``VOILA_BASE_URL``); the launcher puts the
    bundle in the folder Voila serves and runs the kernel in.
    """
    env = os.environ if environ is None else environ
    base = env.get("VOILA_BASE_URL")
    folder = Path.cwd() if cwd is None else cwd
    if base is None or not (folder / ASSET).is_file():
        return None
    return f"{base.rstrip('/')}/voila/files/{ASSET}"


def shim(url: str) -> str:
    """An ES module that re-exports the bundle served at ``url`` (resolved on the page)."""
    return (
        f"const bundle = await import(new URL({json.dumps(url)}, location.href).href);\n"
        "export default bundle.default;\n"
    )


@functools.cache
def _shared_class(url: str) -> type[go.FigureWidget]:
    # anywidget reads ``_esm`` from the class when the widget is made, before its
    # state is first sent, so the shim must be on a class.
    cls: type[go.FigureWidget] = type("SharedFigureWidget", (go.FigureWidget,), {"_esm": shim(url)})
    return cls


def figure_widget(figure: go.Figure, url: str | None = None, **kwargs: Any) -> go.FigureWidget:
    """``figure`` as a FigureWidget that fills its box; sharing the served bundle if any.

    Plotly draws a widget 700 px wide unless it is autosized, and redraws it at
    its box's size only on a window resize (``responsive``); the console sends
    one when a tab is opened (:class:`nexus_ops.ui.live.PageWatch`).
    """
    url = asset_url() if url is None else url
    cls = _shared_class(url) if url else go.FigureWidget
    widget = cls(figure, **kwargs)
    widget.layout.autosize = True
    widget._config = {"responsive": True, "displaylogo": False}
    return widget
