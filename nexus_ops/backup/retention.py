"""Retention policies, the way restic's ``forget`` reads them.

``keep_last`` keeps the newest N backups; ``keep_daily`` (``weekly``,
``monthly``) keeps the newest backup of each of the last N days (ISO weeks,
months) that have one; ``keep_within_days`` keeps every backup made within N days
of the *newest* backup, so a host whose backups stopped does not lose its last
ones. A backup is kept when any rule keeps it; each decision says which. The
default keeps 30 days. Backups of each kind (manual and scheduled together,
pre-restore apart, pre-upgrade apart) are judged as separate groups.

>>> from datetime import UTC
>>> day = 86400.0
>>> backups = [(f"b{i}", i * day) for i in range(10)]
>>> policy = RetentionPolicy(keep_last=2, keep_within_days=0)
>>> [d.id for d in plan(backups, policy, tz=UTC) if d.keep]
['b9', 'b8']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from nexus_ops.backup.models import PruneDecision
from nexus_ops.errors import BackupError

DAY = 86400.0


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backups to keep; zero turns a rule off."""

    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_within_days: float = 30.0

    def check(self) -> None:
        values = (
            self.keep_last,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_within_days,
        )
        if any(value < 0 for value in values):
            raise BackupError(
                "retention counts cannot be negative", hint="use 0 to turn a rule off"
            )
        if not any(values):
            raise BackupError(
                "the retention policy keeps nothing (every rule is 0)",
                hint="set at least one of NEXUS_BACKUP_KEEP_LAST, _DAILY, _WEEKLY, _MONTHLY "
                "or _WITHIN_DAYS; prune never removes every backup",
            )

    def describe(self) -> str:
        rules = [
            f"{name} {value:g}"
            for name, value in (
                ("last", self.keep_last),
                ("daily", self.keep_daily),
                ("weekly", self.keep_weekly),
                ("monthly", self.keep_monthly),
                ("within days", self.keep_within_days),
            )
            if value
        ]
        return "keep " + ", ".join(rules)


def _buckets(tz: tzinfo | None) -> list[tuple[str, Callable[[float], str]]]:
    def local(ts: float) -> datetime:
        return datetime.fromtimestamp(ts, tz)

    def week(ts: float) -> str:
        year, number, _ = local(ts).isocalendar()
        return f"{year}-W{number:02d}"

    return [
        ("last", lambda ts: str(ts)),
        ("daily", lambda ts: local(ts).strftime("%Y-%m-%d")),
        ("weekly", week),
        ("monthly", lambda ts: local(ts).strftime("%Y-%m")),
    ]


def plan(
    backups: Sequence[tuple[str, float]], policy: RetentionPolicy, tz: tzinfo | None = None
) -> list[PruneDecision]:
    """A decision for each ``(id, created)`` backup of one group, newest first."""
    policy.check()
    ordered = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    reasons: dict[str, list[str]] = {backup_id: [] for backup_id, _ in ordered}
    counts = {
        "last": policy.keep_last,
        "daily": policy.keep_daily,
        "weekly": policy.keep_weekly,
        "monthly": policy.keep_monthly,
    }
    for rule, bucket_of in _buckets(tz):
        left, last_bucket = counts[rule], None
        for backup_id, created in ordered:
            if left <= 0:
                break
            bucket = bucket_of(created)
            if bucket != last_bucket:
                reasons[backup_id].append(rule if rule == "last" else f"{rule} {bucket}")
                last_bucket, left = bucket, left - 1
    if ordered and policy.keep_within_days:
        horizon = ordered[0][1] - policy.keep_within_days * DAY
        for backup_id, created in ordered:
            if created >= horizon:
                reasons[backup_id].append(f"within {policy.keep_within_days:g} days")
    return [
        PruneDecision(
            id=backup_id, created=created, keep=bool(reasons[backup_id]), reasons=reasons[backup_id]
        )
        for backup_id, created in ordered
    ]
