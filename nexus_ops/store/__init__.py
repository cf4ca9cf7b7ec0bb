"""The embedded SQLite database (sqlite3): the journal, settings of state, and more.

All SQLite access of nexus-ops lives in this package; sqlite3 errors are mapped
to :class:`~nexus_ops.errors.StoreError` here.
"""

from __future__ import annotations

from nexus_ops.store.db import Database
from nexus_ops.store.journal import Journal

__all__ = ["Database", "Journal"]
