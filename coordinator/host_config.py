"""What a host is configured with: the same for every host of a pool, shipped once."""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.core.definition import SagaDefinition
from coordinator.invoker import Endpoint
from coordinator.leases import DEFAULT_LEASE_SECONDS


@dataclass(frozen=True)
class HostConfig:
    """Everything a host needs, shipped to its Ray actor once at creation."""

    journal_url: str
    definitions: tuple[SagaDefinition, ...]
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    pool_size: int = 512
    # The API's OTEL_* settings: a host on another node does not share its environment.
    otel_env: dict[str, str] = field(default_factory=dict)
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    # Test-only crash injection: checkpoint name -> probability of a hard exit.
    fault_points: dict[str, float] = field(default_factory=dict)
    # How long a draining host lets attempts in flight reply before abandoning them
    # (the next host re-sends them with the same idempotency key).
    drain_seconds: float = 5.0
    # Hand-overs and finish-feed polls over a direct TCP link (``host_link.py``)
    # instead of Ray actor calls; off, or when the link is down, they go over Ray.
    host_link: bool = True
