"""The health gate of an upgrade: what the new version must show before it is kept.

Before the old server stops, :func:`take_snapshot` notes the sessions it lists
(``GET /session``) and the ids of the last messages of a few of them
(``GET /session/{id}/message``). After the new version starts, :func:`gate_problems`
checks that it is healthy, answers the new version, that OpenCode's database passes
``PRAGMA integrity_check``, that every session listed before is listed again and
that those last messages read back with the same ids.

>>> snapshot_problems(Snapshot(sessions=["a", "b"]), ["a"], {})
['session b listed before the upgrade is not listed after it']
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nexus_ops.errors import NexusOpsError
from nexus_ops.opencode import OpenCodeClient
from nexus_ops.store.backups_copy import integrity_check
from nexus_ops.upgrade.record import Snapshot

SAMPLED_SESSIONS = 3
LAST_MESSAGES = 5
READ_TIMEOUT = 10.0


def session_list(client: OpenCodeClient) -> list[str]:
    return sorted(str(row["id"]) for row in client.sessions())


def last_message_ids(client: OpenCodeClient, session: str) -> list[str]:
    rows: list[Any] = list(client.get(f"/session/{session}/message", timeout=READ_TIMEOUT))
    return [str(row["info"]["id"]) for row in rows[-LAST_MESSAGES:]]


def take_snapshot(client: OpenCodeClient) -> Snapshot:
    """The sessions the server lists, and the last message ids of the newest few."""
    rows = client.sessions()
    newest = sorted(rows, key=lambda row: -float((row.get("time") or {}).get("updated") or 0))
    sampled = [str(row["id"]) for row in newest[:SAMPLED_SESSIONS]]
    return Snapshot(
        sessions=sorted(str(row["id"]) for row in rows),
        last_messages={session: last_message_ids(client, session) for session in sampled},
    )


def snapshot_problems(
    before: Snapshot, sessions_after: list[str], messages_after: Mapping[str, list[str]]
) -> list[str]:
    """What of ``before`` the server does not show any more."""
    listed = set(sessions_after)
    problems = [
        f"session {session} listed before the upgrade is not listed after it"
        for session in before.sessions
        if session not in listed
    ]
    for session, ids in before.last_messages.items():
        after = messages_after.get(session)
        if after is not None and after != ids:
            problems.append(
                f"the last messages of session {session} read back as {after}, not {ids}"
            )
    return problems


def gate_problems(
    client: OpenCodeClient, version: str, database: Path, before: Snapshot | None
) -> list[str]:
    """Every check of the gate that fails (the server is healthy by now); [] when it passes."""
    problems = []
    try:
        health = client.health()
        if health.version != version:
            problems.append(f"/global/health answers version {health.version}, not {version}")
        checked = integrity_check(database)
        if checked != "ok":
            problems.append(f"PRAGMA integrity_check of {database}: {checked}")
        if before is not None:
            messages = {s: last_message_ids(client, s) for s in before.last_messages}
            problems += snapshot_problems(before, session_list(client), messages)
    except NexusOpsError as exc:
        problems.append(f"the server did not answer the gate's checks: {exc.message}")
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"the server's answer to the gate's checks is not understood: {exc!r}")
    return problems
