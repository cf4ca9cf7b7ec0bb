"""The kernel a runbook runs in: private sockets, and its own output kept beside the run.

The kernel is a child process; what it writes to its own stdout and stderr (its log,
a library's warning, the traceback ipykernel may print while it shuts down) is not the
notebook's output, which travels over its sockets. It goes to
``<run id>.kernel.log`` beside the executed notebook, never to the terminal of
``nexus-ops runbook run`` or to the agent's log.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from traitlets import Unicode
from traitlets.config import Config


class RunbookKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel writes its stdout and stderr to ``output_file``."""

    output_file = Unicode("", config=True, help="where the kernel's stdout and stderr go")

    async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
        if not self.output_file:
            await super().start_kernel(**kw)
            return
        with Path(self.output_file).open("ab") as output:  # the child keeps its own copy
            await super().start_kernel(stdout=output, stderr=output, **kw)


def kernel_log_path(notebook: Path) -> Path:
    return notebook.with_suffix(".kernel.log")


@contextlib.contextmanager
def private_kernel_config(notebook: Path) -> Iterator[Config]:
    """A runbook's kernel speaks over Unix sockets in a private (0700) folder, not over
    loopback TCP where any local user may knock; the folder goes with the run. Its own
    output goes to :func:`kernel_log_path` of the run's notebook."""
    with tempfile.TemporaryDirectory(prefix="nexus-ops-kernel-") as folder:
        yield Config(
            {
                "NotebookClient": {"kernel_manager_class": RunbookKernelManager},
                "KernelManager": {"transport": "ipc", "ip": str(Path(folder) / "k")},
                "RunbookKernelManager": {"output_file": str(kernel_log_path(notebook))},
            }
        )
