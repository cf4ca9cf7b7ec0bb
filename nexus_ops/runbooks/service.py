"""Runbooks as the agent serves them: the catalog, runs started in the background, the index.

>>> # service = RunbookService(settings, database); service.start("backup", {"dry_run": False})
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexus_ops.config import Settings
from nexus_ops.errors import RunbookError
from nexus_ops.paths import Layout
from nexus_ops.redact import is_secret_name
from nexus_ops.runbooks.models import Runbook
from nexus_ops.store.db import Database
from nexus_ops.store.runs import RunIndex, RunRecord

if TYPE_CHECKING:
    # papermill (and nbformat's schema checks) take a second and tens of MB to load;
    # the agent loads them when a runbook is first listed or run.
    from nexus_ops.runbooks.catalog import RunbookCatalog
    from nexus_ops.runbooks.engine import RunbookRunner


class RunbookService:
    """Lists runbooks, starts runs in worker threads, reads the run index."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.layout = Layout(settings.home)
        self.index = RunIndex(database)
        self._catalog: RunbookCatalog | None = None
        self._threads: dict[str, threading.Thread] = {}

    @property
    def catalog(self) -> RunbookCatalog:
        if self._catalog is None:
            from nexus_ops.runbooks.catalog import RunbookCatalog

            self._catalog = RunbookCatalog.locate(self.settings.runbooks_dir)
        return self._catalog

    def runner(self) -> RunbookRunner:
        from nexus_ops.runbooks.engine import RunbookRunner

        self.layout.runs.mkdir(parents=True, exist_ok=True)
        return RunbookRunner(
            self.catalog,
            self.index,
            self.layout.runs,
            cell_timeout=self.settings.runbook_cell_timeout,
        )

    def runbooks(self) -> list[Runbook]:
        return self.catalog.list()

    def get(self, name: str) -> Runbook:
        return self.catalog.get(name)

    def start(self, name: str, parameters: dict[str, Any], who: str) -> RunRecord:
        """Check the parameters and take the lock here (errors reach the caller), then run
        in a background thread; the returned record says ``running``."""
        prepared = self.runner().prepare(name, parameters, who=who)
        thread = threading.Thread(
            target=prepared.execute, name=f"runbook-{prepared.record.id}", daemon=True
        )
        self._threads[prepared.record.id] = thread
        thread.start()
        return prepared.record

    def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        thread = self._threads.get(run_id)
        if thread is not None:
            thread.join(timeout)
        return self.index.get(run_id)

    def runs(self, limit: int = 50, runbook: str | None = None) -> list[RunRecord]:
        return self.index.recent(limit, runbook)

    def run(self, run_id: str) -> RunRecord:
        return self.index.get(run_id)

    def secrets(self) -> list[str]:
        """What must never be shown: every file of the secrets folder, secret settings."""
        fields = type(self.settings).model_fields
        values = [str(getattr(self.settings, n) or "") for n in fields if is_secret_name(n)]
        folder = self.layout.secrets
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        values += [f.read_text(encoding="utf-8", errors="replace").strip() for f in files if f.is_file()]
        return [v for v in values if v]

    def notebook_html(self, run_id: str) -> str:
        """The executed notebook of a run as sanitised HTML, secrets masked."""
        from nexus_ops.runbooks.report import notebook_html

        return notebook_html(self.notebook(run_id), self.secrets())

    def notebook(self, run_id: str) -> Path:
        """The executed notebook of a run (the audit record)."""
        path = Path(self.index.get(run_id).notebook)
        if not path.is_file():
            raise RunbookError(f"the notebook of run {run_id} is gone ({path})")
        return path
