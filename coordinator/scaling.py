"""How many SagaHosts the pool should have: a pure decision, unit-tested without Ray.

Contract of :class:`ScaleDecider`:
- Owns nothing but the time since which the pool looked too big. ``decide`` is
  given the current size, the executions in flight on every host and the time,
  and returns the size to move to; the supervisor applies it.
- Grows at once, as far as needed: ``ceil(in_flight / target_per_host)`` hosts,
  capped at ``max_hosts``. A new host only takes new work, so growing early is cheap.
- Shrinks one host at a time, and only after the load has stayed low enough for
  ``scale_down_after`` seconds that the pool one host smaller would be at most
  ``DOWN_FRACTION`` of its target: the gap between the two thresholds and the
  delay keep the pool from flapping when the load hovers around a boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A host is removed only when the pool without it would run at most this share
# of its target load (hysteresis: growing starts at 100 %).
DOWN_FRACTION = 0.5
DEFAULT_TARGET_PER_HOST = 100.0
DEFAULT_SCALE_DOWN_AFTER = 60.0


@dataclass(frozen=True)
class ScalePolicy:
    """The pool's bounds; ``min_hosts == max_hosts`` is a fixed pool."""

    min_hosts: int
    max_hosts: int
    target_per_host: float = DEFAULT_TARGET_PER_HOST
    scale_down_after: float = DEFAULT_SCALE_DOWN_AFTER

    def __post_init__(self) -> None:
        if self.min_hosts < 1:
            raise ValueError(f"min_hosts must be at least 1, not {self.min_hosts}")
        if self.max_hosts < self.min_hosts:
            raise ValueError(f"max_hosts ({self.max_hosts}) must be at least min_hosts "
                             f"({self.min_hosts})")
        if not self.target_per_host > 0:
            raise ValueError(f"target_per_host must be above 0, not {self.target_per_host}")
        if self.scale_down_after < 0:
            raise ValueError(f"scale_down_after cannot be negative, not {self.scale_down_after}")

    @classmethod
    def fixed(cls, size: int) -> ScalePolicy:
        return cls(size, size)

    @property
    def elastic(self) -> bool:
        return self.max_hosts > self.min_hosts


class ScaleDecider:
    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self._low_since: float | None = None

    def decide(self, size: int, in_flight: int, now: float) -> int:
        """The size the pool should move to now (``size`` when it should stay)."""
        policy = self.policy
        wanted = max(policy.min_hosts, math.ceil(in_flight / policy.target_per_host))
        if size < policy.min_hosts or wanted > size:
            self._low_since = None
            return min(policy.max_hosts, max(wanted, policy.min_hosts))
        if size > policy.max_hosts:
            self._low_since = None
            return policy.max_hosts
        smaller = size - 1
        if smaller < policy.min_hosts or in_flight > smaller * policy.target_per_host \
                * DOWN_FRACTION:
            self._low_since = None
            return size
        if self._low_since is None:
            self._low_since = now
        if now - self._low_since < policy.scale_down_after:
            return size
        # The next removal needs another full quiet period.
        self._low_since = now
        return smaller
