"""What one SagaHost counts: its executions' journaled events and its journal writes.

Contract of :class:`HostMetrics`:
- Owns plain counters and fixed-bucket histograms, per saga; nothing else holds them.
- Fed by two hooks: ``on_journaled(state, events)``, which the runner calls after each
  durable append with the whole batch (so each event is counted once, when it is a
  fact), and ``journal_committed`` / ``journal_appended``, which the journal writer
  calls per transaction and per write request (from its own thread, for SQLite: those
  two histograms are only ever written by that one thread).
- ``on_journaled`` is O(events): one dict lookup per event and integer increments; no
  I/O, no locks, and it never raises into the runner.
- ``snapshot`` returns plain data (dicts, lists, numbers) that crosses Ray by pickle;
  counters start at zero with the host process (a restarted host starts over, which
  Prometheus reads as a counter reset of that host's series).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from coordinator.core import events as ev
from coordinator.core.state import ExecutionState
from coordinator.metrics.histogram import (
    BATCH_BUCKETS,
    JOURNAL_BUCKETS,
    LATENCY_BUCKETS,
    Histogram,
)

OUTCOMES = ("succeeded", "retryable", "business_failure", "unknown")
ENDED = ("completed", "compensated", "failed")
ROLLBACKS = ("step_failed", "cancelled", "deadline", "history_limit")
PHASES = ("action", "compensation")
_OUTCOME = {name: index for index, name in enumerate(OUTCOMES)}
_ROLLBACK = {name: index for index, name in enumerate(ROLLBACKS)}
_PHASE = {name: index for index, name in enumerate(PHASES)}


class SagaCounters:
    """The counters of one saga on one host (its name is the key it is kept under)."""

    __slots__ = ("attempts", "compensations", "ended", "retries", "rollbacks", "saga_seconds",
                 "step_seconds")

    def __init__(self) -> None:
        self.attempts = [0] * len(OUTCOMES)  # action attempts by outcome
        self.compensations = [0] * len(OUTCOMES)  # compensation attempts by outcome
        self.ended = [0] * len(ENDED)
        self.rollbacks = [0] * len(ROLLBACKS)
        self.retries = [0] * len(PHASES)
        self.step_seconds = Histogram(LATENCY_BUCKETS)  # first attempt to success
        self.saga_seconds = [Histogram(LATENCY_BUCKETS) for _ in ENDED]  # start to end

    def snapshot(self) -> dict[str, Any]:
        return {
            "attempts": dict(zip(OUTCOMES, self.attempts, strict=True)),
            "compensation_attempts": dict(zip(OUTCOMES, self.compensations, strict=True)),
            "ended": dict(zip(ENDED, self.ended, strict=True)),
            "rollbacks": dict(zip(ROLLBACKS, self.rollbacks, strict=True)),
            "retries": dict(zip(PHASES, self.retries, strict=True)),
            "step_seconds": self.step_seconds.snapshot(),
            "saga_seconds": {status: h.snapshot()
                             for status, h in zip(ENDED, self.saga_seconds, strict=True)},
        }


Count = Callable[[SagaCounters, ExecutionState, Any], None]


class HostMetrics:
    def __init__(self) -> None:
        self._sagas: dict[str, SagaCounters] = {}
        self.journal_seconds = Histogram(JOURNAL_BUCKETS)
        self.journal_batch = Histogram(BATCH_BUCKETS)

    def on_journaled(self, state: ExecutionState, events: Sequence[ev.Event]) -> None:
        counters = self._sagas.get(state.saga)
        if counters is None:
            counters = self._sagas[state.saga] = SagaCounters()
        for event in events:
            count = _COUNTS.get(event.type)
            if count is not None:
                count(counters, state, event)

    def journal_committed(self, batch_size: int) -> None:
        self.journal_batch.observe(batch_size)

    def journal_appended(self, seconds: float) -> None:
        self.journal_seconds.observe(seconds)

    def snapshot(self) -> dict[str, Any]:
        return {
            "sagas": {saga: counters.snapshot() for saga, counters in self._sagas.items()},
            "journal_append_seconds": self.journal_seconds.snapshot(),
            "journal_batch_size": self.journal_batch.snapshot(),
        }


def _attempt_ok(c: SagaCounters, s: ExecutionState, e: ev.StepAttemptSucceeded) -> None:
    c.attempts[0] += 1
    step = s.steps.get(e.step)
    if step is not None and step.status == "succeeded" and step.started_at is not None:
        c.step_seconds.observe(max(0.0, e.at - step.started_at))


def _attempt_failed(c: SagaCounters, s: ExecutionState, e: ev.StepAttemptFailed) -> None:
    c.attempts[_OUTCOME[e.outcome]] += 1


def _compensation_ok(c: SagaCounters, s: ExecutionState, e: ev.CompensationSucceeded) -> None:
    c.compensations[0] += 1


def _compensation_failed(c: SagaCounters, s: ExecutionState, e: ev.CompensationFailed) -> None:
    c.compensations[_OUTCOME[e.outcome]] += 1


def _retry(c: SagaCounters, s: ExecutionState, e: ev.RetryScheduled) -> None:
    c.retries[_PHASE[e.phase]] += 1


def _triggered(c: SagaCounters, s: ExecutionState, e: ev.CompensationTriggered) -> None:
    c.rollbacks[_ROLLBACK[e.reason]] += 1


def _cancelled(c: SagaCounters, s: ExecutionState, e: ev.CancelRequested) -> None:
    # The runner journals a cancel only once it was accepted: it starts a rollback.
    c.rollbacks[1] += 1


def _deadline(c: SagaCounters, s: ExecutionState, e: ev.DeadlinePassed) -> None:
    c.rollbacks[2] += 1


def _ended(index: int) -> Count:
    def count(c: SagaCounters, s: ExecutionState, e: Any) -> None:
        c.ended[index] += 1
        c.saga_seconds[index].observe(max(0.0, e.at - s.created_at))

    return count


_COUNTS: dict[str, Count] = {
    "step_attempt_succeeded": _attempt_ok,
    "step_attempt_failed": _attempt_failed,
    "compensation_succeeded": _compensation_ok,
    "compensation_failed": _compensation_failed,
    "retry_scheduled": _retry,
    "compensation_triggered": _triggered,
    "cancel_requested": _cancelled,
    "deadline_passed": _deadline,
    "execution_completed": _ended(0),
    "execution_compensated": _ended(1),
    "execution_failed": _ended(2),
}
