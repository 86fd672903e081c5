"""Folding journal events into execution state. Facts only: no decisions here.

``apply`` is total: an event that no longer fits the state (a cancel that arrives
after the pivot, a late reply) is recorded where it matters and otherwise
ignored, so a journal always replays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from coordinator.core import events as ev
from coordinator.core.definition import SagaDefinition
from coordinator.core.state import Attempts, ExecutionState, StepState


def replay(definition: SagaDefinition, events: Iterable[ev.Event]) -> ExecutionState:
    state = ExecutionState()
    for event in events:
        apply(definition, state, event)
    return state


def apply(definition: SagaDefinition, state: ExecutionState, event: ev.Event) -> None:
    handler = _HANDLERS[event.type]
    handler(definition, state, event)
    state.updated_at = event.at
    state.last_seq += 1


def pivot_succeeded(definition: SagaDefinition, state: ExecutionState) -> bool:
    pivot = definition.graph.pivot
    return pivot is not None and state.steps[pivot].status == "succeeded"


def can_cancel(definition: SagaDefinition, state: ExecutionState) -> bool:
    """A cancel is accepted while running and before a succeeded pivot."""
    return state.status == "running" and not pivot_succeeded(definition, state)


def _started(d: SagaDefinition, s: ExecutionState, e: ev.ExecutionStarted) -> None:
    s.execution_id, s.saga, s.version, s.input = e.execution_id, e.saga, e.version, e.input
    s.created_at, s.deadline, s.trace = e.at, e.deadline, e.trace
    s.steps = {step.name: StepState(step.name) for step in d.steps}


def _host(d: SagaDefinition, s: ExecutionState, e: ev.HostAssigned) -> None:
    s.host, s.node_id = e.host, e.node_id


def _skipped(d: SagaDefinition, s: ExecutionState, e: ev.StepSkipped) -> None:
    step = s.steps[e.step]
    step.status, step.ended_at = "skipped", e.at


def _attempt_started(d: SagaDefinition, s: ExecutionState, e: ev.StepAttemptStarted) -> None:
    step = s.steps[e.step]
    _begin(step.action, e.attempt)
    if e.recovering:
        step.recovery += 1
        step.status = "compensating"
    else:
        s.action_attempts += 1
        if step.status != "compensating":
            step.status = "running"
    step.started_at = step.started_at or e.at


def _attempt_succeeded(d: SagaDefinition, s: ExecutionState, e: ev.StepAttemptSucceeded) -> None:
    step = s.steps[e.step]
    _end(step.action, "succeeded", False, None, e.status_code, None)
    step.output, step.error, step.ended_at = e.output, None, e.at
    if step.status != "compensating":
        step.status = "succeeded"


def _attempt_failed(d: SagaDefinition, s: ExecutionState, e: ev.StepAttemptFailed) -> None:
    step = s.steps[e.step]
    _end(step.action, e.outcome, e.retry_allowed, e.retry_after, e.status_code, e.error)
    step.error, step.ended_at = e.error, e.at
    if step.status == "compensating" and e.outcome == "business_failure":
        # The re-sent action was refused: the service holds no effect to undo.
        step.status = "failed"


def _retry_scheduled(d: SagaDefinition, s: ExecutionState, e: ev.RetryScheduled) -> None:
    _phase(s.steps[e.step], e.phase).retry_due = e.due


def _step_failed(d: SagaDefinition, s: ExecutionState, e: ev.StepFailed) -> None:
    step = s.steps[e.step]
    phase = _phase(step, e.phase)
    phase.retry_due, phase.error = None, e.error
    step.status = "compensation_failed" if e.phase == "compensation" else "failed"
    step.error = e.error if e.phase == "action" else step.error
    step.ended_at = e.at


def _compensation_started(d: SagaDefinition, s: ExecutionState, e: ev.CompensationStarted) -> None:
    step = s.steps[e.step]
    _begin(step.compensation, e.attempt)
    step.status = "compensating"


def _compensation_ok(d: SagaDefinition, s: ExecutionState, e: ev.CompensationSucceeded) -> None:
    step = s.steps[e.step]
    _end(step.compensation, "succeeded", False, None, e.status_code, None)
    step.status = "compensated"


def _compensation_failed(d: SagaDefinition, s: ExecutionState, e: ev.CompensationFailed) -> None:
    step = s.steps[e.step]
    _end(step.compensation, e.outcome, e.retry_allowed, e.retry_after, e.status_code, e.error)


def _triggered(d: SagaDefinition, s: ExecutionState, e: ev.CompensationTriggered) -> None:
    _roll_back(s, e.reason, e.error)
    if e.step is not None:
        step = s.steps[e.step]
        s.failed_step = e.step
        step.action.retry_due = None
        if step.status == "running":
            step.status, step.ended_at = "failed", e.at


def _cancel(d: SagaDefinition, s: ExecutionState, e: ev.CancelRequested) -> None:
    if can_cancel(d, s):
        s.cancel_reason = e.reason
        _roll_back(s, "cancelled", e.reason or "cancelled by request")


def _deadline(d: SagaDefinition, s: ExecutionState, e: ev.DeadlinePassed) -> None:
    if can_cancel(d, s):
        _roll_back(s, "deadline", "the saga's deadline passed")


def _roll_back(s: ExecutionState, reason: str, error: str | None) -> None:
    s.status, s.reason, s.error, s.rolled_back = "compensating", reason, error, True


def _resume(d: SagaDefinition, s: ExecutionState, e: ev.ResumeRequested) -> None:
    if s.status != "failed":
        return
    s.error, s.not_compensated = None, []
    if s.rolled_back:
        s.status = "compensating"
        for step in s.steps.values():
            if step.status == "compensation_failed":
                step.status = "compensating"
                _rearm(step.compensation, e.at)
                step.recovery = 0
        return
    s.status, s.reason = "running", None
    for step in s.steps.values():
        if step.status == "failed":
            step.status, step.error = "running", None
            _rearm(step.action, e.at)


def _completed(d: SagaDefinition, s: ExecutionState, e: ev.ExecutionCompleted) -> None:
    s.status, s.output = "completed", e.output


def _compensated(d: SagaDefinition, s: ExecutionState, e: ev.ExecutionCompensated) -> None:
    s.status, s.reason = "compensated", e.reason
    s.error = e.error or s.error


def _failed(d: SagaDefinition, s: ExecutionState, e: ev.ExecutionFailed) -> None:
    s.status, s.reason, s.error = "failed", e.reason, e.error
    s.not_compensated = list(e.not_compensated)


def _phase(step: StepState, phase: ev.Phase) -> Attempts:
    return step.compensation if phase == "compensation" else step.action


def _begin(attempts: Attempts, attempt: int) -> None:
    attempts.count = max(attempts.count, attempt)
    attempts.inflight, attempts.retry_due = True, None


def _end(
    attempts: Attempts,
    outcome: Any,
    retry_allowed: bool,
    retry_after: float | None,
    status_code: int | None,
    error: str | None,
) -> None:
    attempts.inflight, attempts.last_outcome = False, outcome
    attempts.retry_allowed, attempts.retry_after = retry_allowed, retry_after
    attempts.status_code, attempts.error = status_code, error


def _rearm(attempts: Attempts, at: float) -> None:
    attempts.budget_from, attempts.retry_due, attempts.error = attempts.count, at, None


_HANDLERS: dict[str, Callable[[SagaDefinition, ExecutionState, Any], None]] = {
    "execution_started": _started,
    "host_assigned": _host,
    "step_skipped": _skipped,
    "step_attempt_started": _attempt_started,
    "step_attempt_succeeded": _attempt_succeeded,
    "step_attempt_failed": _attempt_failed,
    "retry_scheduled": _retry_scheduled,
    "step_failed": _step_failed,
    "compensation_started": _compensation_started,
    "compensation_succeeded": _compensation_ok,
    "compensation_failed": _compensation_failed,
    "compensation_triggered": _triggered,
    "cancel_requested": _cancel,
    "deadline_passed": _deadline,
    "resume_requested": _resume,
    "execution_completed": _completed,
    "execution_compensated": _compensated,
    "execution_failed": _failed,
}
