"""Running a runbook with papermill: checked parameters, one at a time, a timeout, a record.

A run, in order: the parameters are checked against the notebook's declared types
(nothing starts when one is wrong); the host-wide runbook lock is taken (one
runbook runs at a time: two repairs of one server must not interleave); a row is
added to the run index; papermill executes the notebook into
``NEXUS_HOME/runs/<run id>.ipynb`` with a timeout per cell, saving it as each cell
starts and ends and reporting progress; the verdict of the last cell is copied
into the row. A failed run keeps its notebook, with papermill's banner at the top
and its marker before the failing cell.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import papermill
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from papermill.engines import NBClientEngine, papermill_engines
from papermill.exceptions import PapermillExecutionError
from papermill.execute import raise_for_execution_errors

from nexus_ops.errors import NexusOpsError, RunbookError, StorageFull
from nexus_ops.locks import FileLock, LockBusy
from nexus_ops.paths import atomic_write
from nexus_ops.runbooks.catalog import RunbookCatalog
from nexus_ops.runbooks.kernel import private_kernel_config
from nexus_ops.runbooks.models import Runbook
from nexus_ops.runbooks.nbio import error_output, read_notebook
from nexus_ops.runbooks.params import validate
from nexus_ops.runbooks.verdict import find_verdict
from nexus_ops.store.runs import RunIndex, RunRecord

ENGINE = "nexus-ops"
Progress = Callable[[int, int], None]


class _ProgressEngine(NBClientEngine):  # type: ignore[misc]
    """papermill's nbclient engine, reporting each finished cell and the running one."""

    @classmethod
    def execute_managed_notebook(  # type: ignore[no-untyped-def]
        cls, nb_man, kernel_name, on_cell=None, **kwargs
    ):
        if on_cell is not None:
            start, complete = nb_man.cell_start, nb_man.cell_complete
            done = [0]

            def cell_start(cell: Any, cell_index: int | None = None, **kw: Any) -> None:
                on_cell(done[0], cell_index, False)
                start(cell, cell_index, **kw)

            def cell_complete(cell: Any, cell_index: int | None = None, **kw: Any) -> None:
                complete(cell, cell_index, **kw)
                done[0] += 1
                on_cell(done[0], cell_index, True)

            nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


papermill_engines.register(ENGINE, _ProgressEngine)


def default_who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class PreparedRun:
    """A run whose parameters passed and whose lock is held; :meth:`execute` runs it."""

    def __init__(
        self,
        runner: RunbookRunner,
        runbook: Runbook,
        record: RunRecord,
        parameters: dict[str, Any],
        lock: FileLock,
    ) -> None:
        self.runner = runner
        self.runbook = runbook
        self.record = record
        self.parameters = parameters
        self._lock = lock
        self.current_cell: int | None = None
        self._cell_started = 0.0

    def execute(self, progress_bar: bool | dict[str, Any] = False) -> RunRecord:
        """Execute the notebook; always releases the lock and finishes the row."""
        try:
            return self._execute(progress_bar)
        finally:
            self._lock.release()

    def _on_cell(self, done: int, index: int | None, finished: bool) -> None:
        if not finished:
            self.current_cell = index  # the cell a timeout or a dead kernel stops
            self._cell_started = time.monotonic()
        else:
            self.runner.index.progress(self.record.id, done)
            if self.runner.progress is not None:
                self.runner.progress(done, self.record.cells_total)

    def _execute(self, progress_bar: bool | dict[str, Any]) -> RunRecord:
        output = Path(self.record.notebook)
        index, run_id = self.runner.index, self.record.id
        try:
            with private_kernel_config(output) as config:
                papermill.execute_notebook(
                    self.runbook.path,
                    str(output),
                    parameters=self.parameters,
                    engine_name=ENGINE,
                    kernel_name=self.runner.kernel_name,
                    progress_bar=progress_bar,
                    execution_timeout=self.runner.cell_timeout,
                    cwd=str(output.parent),
                    on_cell=self._on_cell,
                    config=config,
                )
        except PapermillExecutionError as exc:
            return self._failed(exc)
        except (CellTimeoutError, DeadKernelError) as exc:
            return self._failed(self._mark_failure(output, exc))
        except Exception as exc:  # kernel could not start, notebook unreadable, ...
            return index.finish(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        verdict = find_verdict(read_notebook(output))
        if verdict is None:
            return index.finish(
                run_id, "failed", error="the runbook ran to its end but recorded no verdict"
            )
        return index.finish(
            run_id, "succeeded", verdict=verdict.model_dump(mode="json"), healthy=verdict.healthy
        )

    def _failed(self, exc: PapermillExecutionError) -> RunRecord:
        evalue = str(exc.evalue).strip().splitlines()[0] if exc.evalue else ""
        message = f"{exc.ename}: {evalue}" if evalue else str(exc.ename)
        overran = time.monotonic() - self._cell_started >= self.runner.cell_timeout
        if exc.ename == "KeyboardInterrupt" and overran:  # nbclient interrupted it on timeout
            message = f"CellTimeoutError: the cell ran longer than {self.runner.cell_timeout:g} s"

        return self.runner.index.finish(
            self.record.id, "failed", error=message, failed_cell=exc.cell_index
        )

    def _mark_failure(self, output: Path, exc: Exception) -> PapermillExecutionError:
        """Put papermill's failure marker on the cell that timed out or killed the kernel."""
        notebook = read_notebook(output)
        index = self.current_cell if self.current_cell is not None else 0
        what = (
            f"the cell ran longer than {self.runner.cell_timeout:g} s"
            if isinstance(exc, CellTimeoutError)
            else "the kernel died"
        )
        cell = notebook.cells[index]
        cell.setdefault("outputs", []).append(error_output(type(exc).__name__, what))
        cell.metadata.setdefault("papermill", {}).update(status="failed", exception=True)
        for later in notebook.cells[index + 1 :]:
            later.metadata.setdefault("papermill", {}).update(status="pending")
        try:
            raise_for_execution_errors(notebook, str(output))
        except PapermillExecutionError as marked:
            return marked
        return PapermillExecutionError(index, None, "", type(exc).__name__, what, [])


class RunbookRunner:
    """Validates, locks, executes and records runbook runs.

    >>> # runner = RunbookRunner(RunbookCatalog.locate(), RunIndex(db), layout.runs)
    >>> # runner.run("backup", {"dry_run": "false"}, from_strings=True)
    """

    def __init__(
        self,
        catalog: RunbookCatalog,
        index: RunIndex,
        runs_dir: Path,
        *,
        cell_timeout: float = 600.0,
        kernel_name: str = "python3",
        progress: Progress | None = None,
    ) -> None:
        self.catalog = catalog
        self.index = index
        self.runs_dir = runs_dir
        self.cell_timeout = cell_timeout
        self.kernel_name = kernel_name
        self.progress = progress

    def prepare(
        self,
        name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        who: str | None = None,
        from_strings: bool = False,
    ) -> PreparedRun:
        """Check everything and take the lock; nothing has been executed yet."""
        runbook = self.catalog.get(name)
        given = validate(runbook.spec(), parameters or {}, from_strings=from_strings)
        # The record says what the run used: the defaults of the parameters not given too.
        values = {p.name: p.default for p in runbook.parameters} | given
        lock = FileLock(self.runs_dir / ".runbook.lock", f"runbook {name}")
        try:
            lock.acquire()
        except LockBusy as exc:
            raise RunbookError(
                exc.message,
                hint="one runbook runs at a time on a host; "
                "`nexus-ops runbook runs` shows the running one",
            ) from None
        except OSError as exc:
            raise unwritable(self.runs_dir, exc) from exc
        run_id = new_run_id(name)
        notebook = self.runs_dir / f"{run_id}.ipynb"
        try:
            reserve(notebook, Path(runbook.path))
            cells = len(read_notebook(runbook.path).cells) + 1  # + injected
            record = self.index.create(
                run_id,
                name,
                who=who or default_who(),
                parameters=values,
                notebook=str(notebook),
                cells_total=cells,
            )
        except BaseException:
            lock.release()
            with contextlib.suppress(OSError):
                notebook.unlink(missing_ok=True)  # a reserved notebook of a run not listed
            raise
        return PreparedRun(self, runbook, record, values, lock)

    def run(
        self,
        name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        who: str | None = None,
        from_strings: bool = False,
        progress_bar: bool = False,
    ) -> RunRecord:
        """Prepare and execute in this thread; returns the finished record."""
        prepared = self.prepare(name, parameters, who=who, from_strings=from_strings)
        return prepared.execute(progress_bar=progress_bar)


def reserve(notebook: Path, source: Path) -> None:
    """Write the unexecuted notebook where the run's goes: a folder that cannot take it
    (a full disk) refuses the run here, before it is listed."""
    try:
        atomic_write(notebook, source.read_bytes(), mode=0o600)
    except OSError as exc:
        raise unwritable(notebook.parent, exc) from exc


def unwritable(folder: Path, exc: OSError) -> NexusOpsError:
    """The error of a runs folder that refused a write."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(
            f"no runbook can run: {folder} is full ({exc.strerror})",
            hint=f"free space on the file system of {folder} (old runs, backups, logs), "
            "then run it again",
        )
    return RunbookError(
        f"no runbook can run: cannot write in {folder} ({exc.strerror})",
        hint="check the folder's owner and permissions",
    )


def new_run_id(name: str) -> str:
    stamp = datetime.fromtimestamp(time.time(), UTC)
    return f"{stamp:%Y%m%dT%H%M%SZ}-{name}-{secrets.token_hex(2)}"
