"""nexus-ops: the operations console for OpenCode servers.

>>> import nexus_ops
>>> isinstance(nexus_ops.__version__, str)
True
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

from nexus_ops.config import Settings, load_settings
from nexus_ops.errors import NexusOpsError
from nexus_ops.models import Event, ServerState, ServerStatus

# httpx's package imports its command-line tool, and with it click, rich and pygments
# (about 6 MB and a hundred modules), whenever those happen to be installed; nexus-ops
# never runs that tool, and its agent and console kernels stay that much smaller.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

try:
    __version__ = version("nexus-ops")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Event",
    "NexusOpsError",
    "ServerState",
    "ServerStatus",
    "Settings",
    "__version__",
    "load_settings",
]
