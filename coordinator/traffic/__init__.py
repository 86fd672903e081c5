"""Traffic management for the HTTP invoker: instances, balancing, ejection, bulkheads.

See docs/traffic.md for the ``services.yaml`` fields and their defaults.
"""

from coordinator.traffic.policy import DEFAULT_POLICY, OutlierPolicy, TrafficPolicy
from coordinator.traffic.service import ServiceTraffic

__all__ = ["DEFAULT_POLICY", "OutlierPolicy", "ServiceTraffic", "TrafficPolicy"]
