"""Pruning: remove the backups a retention policy does not keep (or only show them).

>>> import tempfile
>>> from pathlib import Path
>>> report = prune(BackupRepository(Path(tempfile.mkdtemp())), RetentionPolicy(), dry_run=True)
>>> report.dry_run, report.to_remove
(True, [])
"""

from __future__ import annotations

from datetime import tzinfo

from nexus_ops.backup.models import SAFETY_KINDS, Manifest, PruneDecision, PruneReport
from nexus_ops.backup.repository import BackupRepository
from nexus_ops.backup.retention import RetentionPolicy, plan


def group_of(manifest: Manifest) -> str:
    """Retention judges pre-restore and pre-upgrade backups apart from the regular ones
    (each kind its own group), so the newest of each is always kept."""
    return manifest.kind if manifest.kind in SAFETY_KINDS else "regular"


def decide(
    manifests: list[Manifest], policy: RetentionPolicy, tz: tzinfo | None = None
) -> list[PruneDecision]:
    """Decisions for every backup, newest first."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for manifest in manifests:
        groups.setdefault(group_of(manifest), []).append((manifest.id, manifest.created))
    decisions = [d for members in groups.values() for d in plan(members, policy, tz)]
    return sorted(decisions, key=lambda d: (d.created, d.id), reverse=True)


def prune(
    repo: BackupRepository,
    policy: RetentionPolicy,
    *,
    dry_run: bool = True,
    tz: tzinfo | None = None,
    lock_wait: float = 60.0,
) -> PruneReport:
    """Apply ``policy``; with ``dry_run`` nothing is removed and the plan is returned."""
    policy.check()
    if dry_run:
        decisions = decide(repo.manifests(), policy, tz)
        return PruneReport(
            dry_run=True, decisions=decisions, cleaned=[p.name for p in repo.leftovers()]
        )
    lock = repo.lock("backup prune", wait=lock_wait)
    try:
        manifests = repo.manifests()
        decisions = decide(manifests, policy, tz)
        freed, removed = 0, []
        for decision in decisions:
            if not decision.keep:
                freed += repo.delete(decision.id)
                removed.append(decision.id)
        cleaned = repo.clean_leftovers()
    finally:
        lock.release()
    return PruneReport(
        dry_run=False, decisions=decisions, removed=removed, cleaned=cleaned, freed_bytes=freed
    )
