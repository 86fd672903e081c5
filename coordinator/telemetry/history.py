"""Planning the saga, step and compensation spans from an execution's journal; no OTel.

These spans outlive any one host: a step may start on a host that is killed and
end on the one that resumes it. So they are not kept open in memory; the host
that journals a terminal event reads the history and emits them, with the times
the journal recorded and the ids :class:`~coordinator.telemetry.ids.SagaIds`
derives (the attempts, sent live, already name them as parents).

Attempts are live spans of the host that sent them, except one in flight when
its host died: the host taking over journals it as interrupted, and emits it here
under the id the dead host gave it, so the service's span of it keeps its parent.

A failed execution may be resumed and end again: each terminal event closes a
segment, and :func:`plan_spans` returns the spans that ended in the last one,
the saga span itself only with the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from coordinator.core import events as ev
from coordinator.core.definition import SagaDefinition
from coordinator.core.replay import apply
from coordinator.core.state import ExecutionState
from coordinator.telemetry.ids import SagaIds

AttributeValue = str | int | float | bool
Attributes = dict[str, AttributeValue]


@dataclass
class PlannedEvent:
    name: str
    at_ns: int
    attributes: Attributes = field(default_factory=dict)


@dataclass
class PlannedSpan:
    name: str
    span_id: int
    parent_id: int
    start_ns: int
    attributes: Attributes
    end_ns: int | None = None
    error: str | None = None
    events: list[PlannedEvent] = field(default_factory=list)
    links: list[int] = field(default_factory=list)
    kind: str = "internal"  # or "client", for an interrupted attempt
    segment: int = 0  # the number of terminal events journaled when the span ended


def ns(seconds: float) -> int:
    return round(seconds * 1e9)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def failure_reason(outcome: str, status_code: int | None, error: str | None) -> str:
    """``retryable: HTTP 503``; never a reply body, which may carry anything."""
    if status_code is not None:
        return f"{outcome}: HTTP {status_code}"
    return f"{outcome}: {error}" if error else outcome


def saga_attributes(state: ExecutionState) -> Attributes:
    return {"saga.name": state.saga, "saga.version": state.version,
            "saga.execution_id": state.execution_id}


class _Planner:
    def __init__(self, definition: SagaDefinition, ids: SagaIds) -> None:
        self.definition = definition
        self.ids = ids
        self.state = ExecutionState()
        self.saga: PlannedSpan | None = None
        self.open: dict[tuple[str, str], PlannedSpan] = {}
        self.closed: list[PlannedSpan] = []
        self.last_failure: dict[tuple[str, str], str] = {}
        self.forward_span: dict[str, int] = {}
        self.recovering: set[str] = set()
        self.attempt_started: dict[tuple[str, str, int], float] = {}
        self.interrupted: set[tuple[str, str, int]] = set()
        self.terminals = 0

    def fold(self, event: ev.Event) -> None:
        apply(self.definition, self.state, event)
        handler = getattr(self, f"_on_{event.type}", None)
        if handler is not None:
            handler(event)

    # -- spans --------------------------------------------------------------------

    def _span(self, step: str, phase: str, at: float) -> PlannedSpan:
        """The open span of ``step``'s ``phase``, opened at ``at`` if there is none."""
        key = (step, phase)
        if key not in self.open:
            attempts = self.state.steps[step].compensation if phase == "compensation" else \
                self.state.steps[step].action
            span_id = self.ids.phase_span_id(step, phase, attempts.budget_from)
            name = f"compensate {step}" if phase == "compensation" else f"step {step}"
            # Never before its saga: the API journals a start's first attempts with the
            # time it read just before the saga span's start (and nodes' clocks differ).
            start = max(ns(at), self.saga.start_ns) if self.saga is not None else ns(at)
            span = PlannedSpan(name, span_id, self.ids.saga_span_id, start,
                               {**saga_attributes(self.state), "saga.step": step,
                                "saga.phase": phase, "saga.attempts": 0})
            if phase == "compensation" and step in self.forward_span:
                span.links.append(self.forward_span[step])
            if phase == "action":
                self.forward_span[step] = span_id
            self.open[key] = span
        return self.open[key]

    def _close(self, step: str, phase: str, at: float, status: str,
               error: str | None = None) -> None:
        span = self.open.pop((step, phase), None)
        if span is None:
            return
        span.end_ns, span.error, span.segment = ns(at), error, self.terminals + 1
        span.attributes["saga.step.status"] = status
        self.closed.append(span)
        self.last_failure.pop((step, phase), None)

    def _saga_event(self, name: str, at: float, attributes: Attributes | None = None) -> None:
        if self.saga is not None:
            self.saga.events.append(PlannedEvent(name, ns(at), attributes or {}))

    def _target_phase(self, step: str, phase: str) -> str:
        # An action retry while the step compensates is a recovery re-send.
        if phase == "action" and self.state.steps[step].status == "compensating":
            return "compensation"
        return phase

    # -- events -------------------------------------------------------------------

    def _on_execution_started(self, e: ev.ExecutionStarted) -> None:
        start = self.ids.start_ns if self.ids.start_ns is not None else ns(e.at)
        self.saga = PlannedSpan(f"saga {e.saga}", self.ids.saga_span_id,
                                self.ids.parent_span_id, start, saga_attributes(self.state))

    def _interrupted_attempt(self, step: str, phase: str, attempt: int, at: float,
                             error: str) -> None:
        started = self.attempt_started.get((step, phase, attempt))
        if (step, phase, attempt) not in self.interrupted or started is None:
            return
        parent = self.open.get((step, self._target_phase(step, phase)))
        if parent is None:
            return
        definition = self.definition.step_map[step]
        call = definition.compensation if phase == "compensation" and \
            definition.compensation else definition.action
        attributes: Attributes = {
            **saga_attributes(self.state), "saga.step": step, "saga.phase": phase,
            "saga.attempt": attempt, "saga.service": call.service, "saga.outcome": "unknown",
            "saga.interrupted": True, "http.request.method": call.method}
        self.closed.append(PlannedSpan(
            call.method, self.ids.attempt_span_id(step, phase, attempt), parent.span_id,
            ns(started), attributes, ns(at), failure_reason("unknown", None, error),
            kind="client", segment=self.terminals + 1))

    def _on_host_assigned(self, e: ev.HostAssigned) -> None:
        # Attempts in flight when a host takes over were lost with the host before it.
        for name, step in self.state.steps.items():
            if step.action.inflight:
                self.interrupted.add((name, "action", step.action.count))
            if step.compensation.inflight:
                self.interrupted.add((name, "compensation", step.compensation.count))
        attributes: Attributes = {"saga.host": e.host}
        if e.node_id:
            attributes["saga.node_id"] = e.node_id
        self._saga_event("host assigned", e.at, attributes)

    def _on_step_skipped(self, e: ev.StepSkipped) -> None:
        self._span(e.step, "action", e.at)
        self._close(e.step, "action", e.at, "skipped")

    def _on_step_attempt_started(self, e: ev.StepAttemptStarted) -> None:
        phase = "compensation" if e.recovering else "action"
        if e.recovering:
            self.recovering.add(e.step)
        else:
            self.recovering.discard(e.step)
        span = self._span(e.step, phase, e.at)
        span.attributes["saga.attempts"] = int(span.attributes["saga.attempts"]) + 1
        self.attempt_started[(e.step, "action", e.attempt)] = e.at

    def _on_step_attempt_succeeded(self, e: ev.StepAttemptSucceeded) -> None:
        if e.step not in self.recovering:
            self._close(e.step, "action", e.at, "succeeded")

    def _on_step_attempt_failed(self, e: ev.StepAttemptFailed) -> None:
        phase = "compensation" if e.step in self.recovering else "action"
        self.last_failure[(e.step, phase)] = failure_reason(e.outcome, e.status_code, e.error)
        self._interrupted_attempt(e.step, "action", e.attempt, e.at, e.error)

    def _on_retry_scheduled(self, e: ev.RetryScheduled) -> None:
        phase = self._target_phase(e.step, e.phase)
        span = self.open.get((e.step, phase))
        if span is not None:
            span.events.append(PlannedEvent("retry scheduled", ns(e.at), {
                "saga.attempt": e.attempt, "saga.retry.due": iso(e.due),
                "saga.retry.delay_ms": round((e.due - e.at) * 1000, 1)}))

    def _on_step_failed(self, e: ev.StepFailed) -> None:
        reason = self.last_failure.get((e.step, e.phase)) or (
            "gave up" if e.phase == "action" else "could not compensate")
        status = "failed" if e.phase == "action" else "compensation_failed"
        self._close(e.step, e.phase, e.at, status, reason)

    def _on_compensation_triggered(self, e: ev.CompensationTriggered) -> None:
        attributes: Attributes = {"saga.reason": e.reason}
        if e.step is not None:
            attributes["saga.step"] = e.step
            reason = self.last_failure.get((e.step, "action")) or "failed"
            self._close(e.step, "action", e.at, "failed", reason)
        self._saga_event("compensation triggered", e.at, attributes)

    def _on_compensation_started(self, e: ev.CompensationStarted) -> None:
        self.recovering.discard(e.step)
        span = self._span(e.step, "compensation", e.at)
        span.attributes["saga.attempts"] = int(span.attributes["saga.attempts"]) + 1
        self.attempt_started[(e.step, "compensation", e.attempt)] = e.at

    def _on_compensation_succeeded(self, e: ev.CompensationSucceeded) -> None:
        self._close(e.step, "compensation", e.at, "compensated")

    def _on_compensation_failed(self, e: ev.CompensationFailed) -> None:
        self.last_failure[(e.step, "compensation")] = failure_reason(
            e.outcome, e.status_code, e.error)
        self._interrupted_attempt(e.step, "compensation", e.attempt, e.at, e.error)

    def _on_cancel_requested(self, e: ev.CancelRequested) -> None:
        self._saga_event("cancel requested", e.at)

    def _on_deadline_passed(self, e: ev.DeadlinePassed) -> None:
        self._saga_event("deadline passed", e.at)

    def _on_resume_requested(self, e: ev.ResumeRequested) -> None:
        self._saga_event("resume requested", e.at)

    def _on_execution_completed(self, e: ev.ExecutionCompleted) -> None:
        self._end(e.at, None)

    def _on_execution_compensated(self, e: ev.ExecutionCompensated) -> None:
        self._end(e.at, f"compensated: {e.reason}")

    def _on_execution_failed(self, e: ev.ExecutionFailed) -> None:
        self._end(e.at, f"failed: {e.reason}")

    def _end(self, at: float, error: str | None) -> None:
        for step, phase in list(self.open):
            self._close(step, phase, at, self.state.steps[step].status)
        self.terminals += 1
        if self.saga is not None and self.terminals == 1:
            self.saga.attributes["saga.status"] = self.state.status
            if self.state.failed_step:
                self.saga.attributes["saga.failed_step"] = self.state.failed_step
            self.saga.end_ns, self.saga.error, self.saga.segment = ns(at), error, 1


def plan_spans(
    definition: SagaDefinition, ids: SagaIds, events: Sequence[ev.Event]
) -> list[PlannedSpan]:
    """The spans to emit now that the history ends with a terminal event, parents first."""
    planner = _Planner(definition, ids)
    for event in events:
        planner.fold(event)
    if planner.terminals == 0:
        return []
    found = [s for s in planner.closed if s.segment == planner.terminals]
    if planner.saga is not None and planner.saga.segment == planner.terminals:
        found.insert(0, planner.saga)
    return found
