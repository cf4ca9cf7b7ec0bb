"""The functions the runbooks call: diagnoses (checks) and repairs (steps), typed and tested.

Each returns a :class:`Check` or a :class:`Step` that renders as a small table in
the notebook; :func:`record_verdict` turns them into the run's structured verdict.
A repair does nothing unless it is ``needed`` and ``dry_run`` is False. The names
are loaded on first use, so that ``nexus-ops`` commands stay quick to start.

>>> from nexus_ops import recovery
>>> recovery.Check(name="demo", ok=True, summary="fine").ok
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_ops.lazy import lazy_exports

if TYPE_CHECKING:
    from nexus_ops.recovery.application import (
        check_configuration,
        recent_exits,
        recent_logs,
        restart_server,
        server_status,
        system_resources,
    )
    from nexus_ops.recovery.backups import (
        backup_status,
        check_restore,
        choose_backup,
        create_backup,
        prune_backups,
        restore_backup,
        verify_backup,
    )
    from nexus_ops.recovery.context import AgentControl, RecoveryContext, connect
    from nexus_ops.recovery.database import (
        check_database,
        confirm_sessions,
        newest_good_backup,
        restore_database,
    )
    from nexus_ops.recovery.network import dns, free_port, loopback, outbound, port_binding
    from nexus_ops.recovery.results import Check, Step, record_verdict, verdict

_HOMES = {
    "application": [
        "check_configuration",
        "recent_exits",
        "recent_logs",
        "restart_server",
        "server_status",
        "system_resources",
    ],
    "backups": [
        "backup_status",
        "check_restore",
        "choose_backup",
        "create_backup",
        "prune_backups",
        "restore_backup",
        "verify_backup",
    ],
    "context": ["AgentControl", "RecoveryContext", "connect"],
    "database": ["check_database", "confirm_sessions", "newest_good_backup", "restore_database"],
    "network": ["dns", "free_port", "loopback", "outbound", "port_binding"],
    "results": ["Check", "Step", "record_verdict", "verdict"],
}
__all__ = [
    "AgentControl",
    "Check",
    "RecoveryContext",
    "Step",
    "backup_status",
    "check_configuration",
    "check_database",
    "check_restore",
    "choose_backup",
    "confirm_sessions",
    "connect",
    "create_backup",
    "dns",
    "free_port",
    "loopback",
    "newest_good_backup",
    "outbound",
    "port_binding",
    "prune_backups",
    "recent_exits",
    "recent_logs",
    "record_verdict",
    "restart_server",
    "restore_backup",
    "restore_database",
    "server_status",
    "system_resources",
    "verdict",
    "verify_backup",
]


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())
