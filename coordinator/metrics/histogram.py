"""A fixed-bucket histogram of plain counters, cheap to observe and to ship over Ray."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

# Seconds: attempts and sagas take milliseconds to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0)
# Seconds: a journal write is a commit (an fsync) plus its wait in the queue.
JOURNAL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Write requests committed together in one transaction (group commit).
BATCH_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf), their sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound falls in that bound's bucket (le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum,
                "count": self.count}


def cumulative(snapshot: dict[str, Any]) -> list[tuple[str, float]]:
    """Prometheus buckets (``le`` label, cumulative count) of a snapshot, +Inf last."""
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip([*snapshot["bounds"], float("inf")], snapshot["counts"],
                            strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
    return buckets
