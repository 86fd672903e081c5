"""The traffic fields of a service in ``services.yaml``, with their defaults.

Every field is optional; a service that sets none of them and has one ``url``
runs on the plain path (no health task, no bulkhead, no ejection). Defaults:

- ``health_path``: none (no active health checks); ``health_interval`` 5 s;
  ``health_timeout`` 1 s.
- ``outlier``: ``{consecutive_failures: 5, ejection: 5s, max_ejection: 60s}`` for a
  service with several instances; off for a single ``url`` unless given, because
  ejecting the only instance would turn every failure into a fast failure.
- ``max_concurrency``: none (no bulkhead); ``queue_size`` 100; ``queue_timeout`` 1 s.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from coordinator.core.durations import Duration

DEFAULT_HEALTH_INTERVAL = 5.0
DEFAULT_HEALTH_TIMEOUT = 1.0
DEFAULT_QUEUE_SIZE = 100
DEFAULT_QUEUE_TIMEOUT = 1.0


class OutlierPolicy(BaseModel):
    """Passive ejection: ``consecutive_failures`` failed attempts in a row (connection
    error, timeout, 5xx) eject an instance for ``ejection``, doubled at each ejection
    in a row up to ``max_ejection``; then one trial attempt (half-open) decides."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    consecutive_failures: int = Field(default=5, ge=1, le=10_000)
    ejection: Duration = Field(default=5.0, gt=0)
    max_ejection: Duration = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _max_not_below_base(self) -> OutlierPolicy:
        if self.max_ejection < self.ejection:
            raise ValueError("max_ejection must not be shorter than ejection")
        return self

    def ejection_for(self, level: int) -> float:
        """Seconds of the ``level``-th ejection in a row (1-based)."""
        return min(self.ejection * 2.0 ** max(level - 1, 0), self.max_ejection)


class TrafficPolicy(BaseModel):
    """How the invoker spreads, checks and limits the attempts sent to one service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    health_path: str | None = None
    health_interval: Duration = Field(default=DEFAULT_HEALTH_INTERVAL, gt=0)
    health_timeout: Duration = Field(default=DEFAULT_HEALTH_TIMEOUT, gt=0)
    outlier: OutlierPolicy | None = None
    max_concurrency: int | None = Field(default=None, ge=1, le=1_000_000)
    queue_size: int = Field(default=DEFAULT_QUEUE_SIZE, ge=0, le=1_000_000)
    queue_timeout: Duration = Field(default=DEFAULT_QUEUE_TIMEOUT, ge=0)

    @field_validator("health_path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or any(c in value for c in "?# ")):
            raise ValueError("health_path must be a path starting with '/', without query")
        return value

    def traffic_only(self) -> TrafficPolicy:
        """Just the traffic fields (a ``ServiceConfig`` is a ``TrafficPolicy`` too)."""
        return TrafficPolicy.model_validate(
            {name: getattr(self, name) for name in TrafficPolicy.model_fields})

    def effective_outlier(self, instances: int) -> OutlierPolicy | None:
        """The outlier policy in force: the given one, else the default with 2+ instances."""
        if self.outlier is not None:
            return self.outlier
        return OutlierPolicy() if instances > 1 else None


DEFAULT_POLICY = TrafficPolicy()
