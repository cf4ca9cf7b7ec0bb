"""The life of one alert: inactive, pending, firing, resolved; with flap damping.

* A true condition moves ``inactive``/``resolved`` to ``pending``, and a
  ``pending`` alert whose condition has held ``for`` seconds to ``firing``
  (at once when ``for`` is 0). A false one sends ``pending`` back to ``inactive``.
* A ``firing`` alert resolves only once its condition has been false for
  ``keep_firing_for`` seconds, so one good sample does not end it.
* Flapping: an alert that fired ``flap_limit`` times within ``flap_window``
  seconds is marked flapping; its notifications stop until it has not fired
  for ``flap_window`` seconds, and then its current state is sent once.

The state machine is pure (time is passed in), so its tests need no clock.

>>> rule = AlertRule(name="Down", metric="up", op="<", value=1, **{"for": 10})
>>> track = AlertTrack()
>>> [t.to for t in (track.step(rule, True, 0.0, 100.0), track.step(rule, True, 0.0, 111.0))]
['pending', 'firing']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from nexus_ops.alerts.rules import AlertRule
from nexus_ops.models import Frozen

AlertStateName = Literal["inactive", "pending", "firing", "resolved"]
Notice = Literal["firing", "resolved"]
FLAP_WINDOW = 600.0
FLAP_LIMIT = 4


@dataclass(frozen=True)
class Transition:
    """A change of an alert's state, and what to notify (None: nothing)."""

    rule: str
    frm: AlertStateName
    to: AlertStateName
    value: float | None
    time: float
    notify: Notice | None
    flapping: bool = False


class TrackState(Frozen):
    """What survives an agent restart (kept in the journal's state table)."""

    state: AlertStateName = "inactive"
    since: float | None = None
    active_since: float | None = None
    clear_since: float | None = None
    fired_at: float | None = None
    resolved_at: float | None = None
    value: float | None = None
    fired: list[float] = Field(default_factory=list)
    flapping: bool = False
    notified: AlertStateName | None = None


@dataclass
class AlertTrack:
    """The state of one rule's alert, stepped once per evaluation."""

    state: AlertStateName = "inactive"
    since: float | None = None
    active_since: float | None = None
    clear_since: float | None = None
    fired_at: float | None = None
    resolved_at: float | None = None
    value: float | None = None
    fired: list[float] = field(default_factory=list)
    flapping: bool = False
    notified: AlertStateName | None = None
    flap_window: float = FLAP_WINDOW
    flap_limit: int = FLAP_LIMIT

    def step(
        self, rule: AlertRule, condition: bool, value: float | None, now: float
    ) -> Transition | None:
        """Advance by one evaluation; return the transition, if the state changed."""
        self.value = value
        target = self._target(rule, condition, now)
        flapping_changed = self._update_flapping(now)
        if target is None:
            return self._unflapped(rule, now) if flapping_changed else None
        return self._enter(rule.name, target, now)

    def _target(self, rule: AlertRule, condition: bool, now: float) -> AlertStateName | None:
        if condition:
            self.clear_since = None
            if self.state in ("inactive", "resolved"):
                self.active_since = now
                return "firing" if rule.for_seconds <= 0 else "pending"
            if self.state == "pending" and now - (self.active_since or now) >= rule.for_seconds:
                return "firing"
            return None
        if self.state == "pending":
            self.active_since = None
            return "inactive"
        if self.state == "firing":
            self.clear_since = now if self.clear_since is None else self.clear_since
            if now - self.clear_since >= rule.keep_firing_for:
                return "resolved"
        return None

    def _enter(self, rule: str, target: AlertStateName, now: float) -> Transition:
        before, self.state, self.since = self.state, target, now
        if target == "firing":
            self.fired_at, self.clear_since = now, None
            self.fired = [t for t in self.fired if t > now - self.flap_window] + [now]
            if len(self.fired) >= self.flap_limit:
                self.flapping = True
        elif target == "resolved":
            self.resolved_at, self.active_since, self.clear_since = now, None, None
        notify: Notice | None = None
        if target in ("firing", "resolved") and not self.flapping:
            notify = self.notified = "firing" if target == "firing" else "resolved"
        return Transition(rule, before, target, self.value, now, notify, self.flapping)

    def _update_flapping(self, now: float) -> bool:
        """End flapping once the alert has not fired for a whole flap window."""
        if self.flapping and (not self.fired or self.fired[-1] <= now - self.flap_window):
            self.flapping = False
            self.fired = []
            return True
        return False

    def _unflapped(self, rule: AlertRule, now: float) -> Transition | None:
        """After flapping, send the current state once if it differs from the last sent."""
        current: Notice = "firing" if self.state == "firing" else "resolved"
        if self.notified == current or (self.notified is None and current == "resolved"):
            return None
        self.notified = current
        return Transition(rule.name, self.state, self.state, self.value, now, current)

    def snapshot(self) -> TrackState:
        return TrackState(
            state=self.state,
            since=self.since,
            active_since=self.active_since,
            clear_since=self.clear_since,
            fired_at=self.fired_at,
            resolved_at=self.resolved_at,
            value=self.value,
            fired=list(self.fired),
            flapping=self.flapping,
            notified=self.notified,
        )

    @classmethod
    def restore(cls, saved: TrackState) -> AlertTrack:
        return cls(**saved.model_dump())
