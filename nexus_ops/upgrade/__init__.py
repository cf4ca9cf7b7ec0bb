"""Upgrades of OpenCode with a health gate, a probation and a rollback (docs/upgrades.md).

The names are loaded on first use: the client and the console need only the record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_ops.lazy import lazy_exports

if TYPE_CHECKING:
    from nexus_ops.upgrade.control import UpgradeControl
    from nexus_ops.upgrade.record import OperationRecord, load_record
    from nexus_ops.upgrade.service import Plan, UpgradeError, UpgradeService

_HOMES = {
    "control": ["UpgradeControl"],
    "record": ["OperationRecord", "load_record"],
    "service": ["Plan", "UpgradeError", "UpgradeService"],
}
__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())
__all__ = [
    "OperationRecord",
    "Plan",
    "UpgradeControl",
    "UpgradeError",
    "UpgradeService",
    "load_record",
]
