"""The console's ipywidgets panels, served by Voila or shown in JupyterLab.

``console()`` builds the whole console; each tab is a :class:`Panel` made from a
:class:`PanelContext`, and a capability adds its tab with :func:`register_tab`.

>>> # from nexus_ops.ui import console; console()
"""

from __future__ import annotations

from nexus_ops.ui.app import Console, console
from nexus_ops.ui.base import AgentLike, Banner, Panel, PanelContext
from nexus_ops.ui.registry import TABS, TabRegistry, TabSpec, register_tab

__all__ = [
    "TABS",
    "AgentLike",
    "Banner",
    "Console",
    "Panel",
    "PanelContext",
    "TabRegistry",
    "TabSpec",
    "console",
    "register_tab",
]
