"""Upgrades of OpenCode with a health gate, a probation and a rollback (docs/upgrades.md)."""

from __future__ import annotations

from nexus_ops.upgrade.control import UpgradeControl
from nexus_ops.upgrade.record import OperationRecord, load_record
from nexus_ops.upgrade.service import Plan, UpgradeError, UpgradeService

__all__ = [
    "OperationRecord",
    "Plan",
    "UpgradeControl",
    "UpgradeError",
    "UpgradeService",
    "load_record",
]
