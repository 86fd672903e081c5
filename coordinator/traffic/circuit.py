"""The outlier state of one instance: closed, open (ejected) or half-open (one trial).

Pure: no I/O and no asyncio; time comes from the injected ``clock`` so tests drive it.

- closed: every attempt may go; ``consecutive_failures`` failures in a row open it.
- open: no attempt goes until the ejection ends (``ejection`` doubled at each
  ejection in a row, up to ``max_ejection``), or an active health check passes.
- half_open: the ejection ended; exactly one trial attempt may go. Its success
  closes the circuit (and forgets the doubling); its failure opens it again, longer.

An active health check that fails takes the instance out of rotation whatever the
circuit says, until a check passes (which also ends an ejection early: the instance
then gets its half-open trial at once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from coordinator.traffic.policy import OutlierPolicy

State = Literal["closed", "open", "half_open"]
Clock = Callable[[], float]


class Circuit:
    __slots__ = ("_clock", "_policy", "_trial", "_until", "consecutive_failures", "ejections",
                 "healthy", "level", "state")

    def __init__(self, policy: OutlierPolicy | None, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self.state: State = "closed"
        self.consecutive_failures = 0
        self.ejections = 0  # ejections in total, for metrics
        self.level = 0  # ejections in a row, for the doubling
        self.healthy = True  # the last active health check passed (or none ran)
        self._until = 0.0
        self._trial = False  # the half-open trial attempt is in flight

    @property
    def reported_state(self) -> State:
        """The state as metrics show it: a failed health check counts as open."""
        return self.state if self.healthy else "open"

    def admits(self) -> bool:
        """True when an attempt may go to this instance now (nothing changes)."""
        if not self.healthy:
            return False
        if self.state == "closed":
            return True
        if self.state == "open":
            return self._clock() >= self._until
        return not self._trial

    def acquire(self) -> None:
        """An attempt is being sent here; call only after :meth:`admits` said True."""
        if self.state == "open":
            self.state = "half_open"
        if self.state == "half_open":
            self._trial = True

    def succeeded(self) -> None:
        self.consecutive_failures = 0
        if self.state != "closed":
            self.state, self.level, self._trial = "closed", 0, False

    def failed(self) -> None:
        self.consecutive_failures += 1
        if self._policy is None:
            return
        if self.state == "half_open" or (
                self.state == "closed"
                and self.consecutive_failures >= self._policy.consecutive_failures):
            self._eject(self._policy)

    def released(self) -> None:
        """The attempt sent here ended with neither success nor failure (e.g. a 4xx):
        a half-open trial is then over without a verdict, and another may go."""
        self._trial = False

    def _eject(self, policy: OutlierPolicy) -> None:
        self.level += 1
        self.ejections += 1
        self.state, self._trial = "open", False
        self._until = self._clock() + policy.ejection_for(self.level)

    def health_checked(self, passed: bool) -> None:
        self.healthy = passed
        if passed and self.state == "open":
            self._until = min(self._until, self._clock())

    def seconds_until_trial(self) -> float | None:
        """How long until this instance may take an attempt; None when only a health
        check can bring it back."""
        if not self.healthy:
            return None
        if self.state == "open":
            return max(0.0, self._until - self._clock())
        return 0.0
