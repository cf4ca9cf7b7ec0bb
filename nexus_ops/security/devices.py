"""The security posture's row of paired devices: how many, and their last logins.

>>> # device_sessions(layout).summary -> '2 paired device(s); last: phone (203.0.113.7) ...'
"""

from __future__ import annotations

import time

from nexus_ops.paths import Layout
from nexus_ops.security.posture import PostureItem
from nexus_ops.store import Database
from nexus_ops.store.devices import Device, DeviceStore

NAME = "paired devices"
IDLE_DAYS = 14  # a live session unused this long is worth a look: a lost phone?


def device_sessions(layout: Layout, now: float | None = None) -> PostureItem:
    """Live device sessions in nexus.db: their count, last logins, and idle ones."""
    now = time.time() if now is None else now
    found: list[Device] = []
    if layout.database.exists():
        database = Database(layout.database)
        try:
            found = DeviceStore(database).devices(now)
        finally:
            database.close()
    last = sorted(found, key=lambda d: d.last_used or d.created, reverse=True)
    logins = [
        {"id": d.id, "name": d.name, "address": d.address, "last_use": d.last_used or d.created}
        for d in last
    ]
    idle = [d for d in found if now - (d.last_used or d.created) > IDLE_DAYS * 86400]
    shown = ", ".join(f"{d.name} ({d.address or '?'}, {_when(d)})" for d in last[:3])
    summary = f"{len(found)} paired device(s)" + (f"; last logins: {shown}" if shown else "")
    if idle:
        names = ", ".join(f"{d.name} ({d.id})" for d in idle)
        return PostureItem(
            name=NAME,
            status="warn",
            summary=f"{summary}; unused for over {IDLE_DAYS} days: {names}",
            fix="revoke the sessions no one uses: `nexus-ops devices revoke ID`",
            details={"devices": len(found), "last_logins": logins},
        )
    return PostureItem(
        name=NAME,
        status="pass",
        summary=summary,
        fix="list them with `nexus-ops devices`; revoke with `nexus-ops devices revoke ID|--all`",
        details={"devices": len(found), "last_logins": logins},
    )


def _when(device: Device) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(device.last_used or device.created))
