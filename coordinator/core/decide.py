"""``decide(definition, state, now) -> commands``: the saga as a function from state to
its next moves.

The returned list holds decision events (journal them, then apply them) and
effects (``Invoke``: journal its started event, then send) and at most one
``WaitUntil``. Calling ``decide`` again on the same state returns the same list:
in-flight attempts are part of the state, so nothing is ever sent twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from coordinator.core import events as ev
from coordinator.core.commands import Command, HttpRequest, Invoke, WaitUntil
from coordinator.core.definition import Call, RetryPolicy, SagaDefinition, Step
from coordinator.core.replay import pivot_succeeded
from coordinator.core.state import Attempts, ExecutionState, StepState
from coordinator.core.templates import (
    TemplateError,
    compile_expression,
    render,
    render_headers,
    render_path,
    truthy,
)

_DONE = ("succeeded", "skipped")


def decide(definition: SagaDefinition, state: ExecutionState, now: float) -> list[Command]:
    if state.terminal or not state.steps:
        return []
    if state.status == "running":
        return _forward(definition, state, now)
    return _rollback(definition, state, now)


def interrupted(state: ExecutionState, now: float) -> list[ev.Event]:
    """Failure events for attempts in flight when their host stopped.

    A host taking over an execution journals these first: the reply is lost, so
    the outcome is unknown and the attempt is retried with the same key.
    """
    found: list[ev.Event] = []
    error = "attempt interrupted: the host running it stopped"
    for step in state.steps.values():
        if step.action.inflight:
            found.append(ev.StepAttemptFailed(
                at=now, step=step.name, attempt=step.action.count, outcome="unknown",
                retry_allowed=True, error=error))
        if step.compensation.inflight:
            found.append(ev.CompensationFailed(
                at=now, step=step.name, attempt=step.compensation.count, outcome="unknown",
                retry_allowed=True, error=error))
    return found


def jitter_draw(execution_id: str, step: str, phase: str, attempt: int) -> float:
    """A uniform draw in [0, 1) fixed by the attempt's identity, so replay agrees."""
    digest = hashlib.blake2b(f"{execution_id}:{step}:{phase}:{attempt}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64


# --- forward ---------------------------------------------------------------------------


def _forward(d: SagaDefinition, s: ExecutionState, now: float) -> list[Command]:
    past_pivot = pivot_succeeded(d, s)
    if s.deadline is not None and now >= s.deadline and not past_pivot:
        return [ev.DeadlinePassed(at=now)]
    failed = [name for name, st in s.steps.items() if st.status == "failed"]
    if failed and not past_pivot:
        error = s.steps[failed[0]].error
        return [ev.CompensationTriggered(at=now, reason="step_failed", step=failed[0], error=error)]
    if failed:
        return [] if s.inflight() else [_forward_failure(s, failed, now)]
    if all(step.status in _DONE for step in s.steps.values()):
        output = {n: st.output for n, st in s.steps.items() if st.status == "succeeded"}
        return [ev.ExecutionCompleted(at=now, output=output)]
    if s.last_seq >= d.limits.max_events:
        error = (f"history limit: {s.last_seq} events journaled, limits.max_events is "
                 f"{d.limits.max_events}")
        return _history_limit(s, past_pivot, error, now)
    commands = _forward_moves(d, s, now, past_pivot)
    sends = sum(1 for c in commands if isinstance(c, Invoke))
    if sends and s.action_attempts + sends > d.limits.max_attempts:
        error = (f"history limit: {s.action_attempts} action attempts made, "
                 f"limits.max_attempts is {d.limits.max_attempts}")
        return _history_limit(s, past_pivot, error, now)
    return commands


def _history_limit(s: ExecutionState, past_pivot: bool, error: str, now: float) -> list[Command]:
    """Stop going forward: roll back (the reserve lets compensation run), or past the
    pivot, where nothing is undone, fail once the attempts in flight have answered."""
    if not past_pivot:
        return [ev.CompensationTriggered(at=now, reason="history_limit", error=error)]
    return [] if s.inflight() else [ev.ExecutionFailed(at=now, reason="history_limit",
                                                       error=error)]


def _forward_moves(d: SagaDefinition, s: ExecutionState, now: float,
                   past_pivot: bool) -> list[Command]:
    commands: list[Command] = []
    wake = s.deadline if not past_pivot else None
    for step in d.steps:
        st = s.steps[step.name]
        if st.status == "pending":
            if all(s.steps[dep].status in _DONE for dep in step.depends_on):
                commands.append(_start_step(d, s, step, now))
        elif st.status == "running" and not st.action.inflight:
            move = _next_attempt(d, s, step, st.action, step.retry, now, past_pivot)
            if isinstance(move, float):
                wake = move if wake is None else min(wake, move)
            elif isinstance(move, ev.CompensationTriggered):
                return [move]
            elif move is not None:
                commands.append(move)
    if wake is not None:
        commands.append(WaitUntil(wake))
    return commands


def _forward_failure(s: ExecutionState, failed: list[str], now: float) -> ev.Event:
    error = "; ".join(f"step {name!r}: {s.steps[name].error}" for name in failed)
    return ev.ExecutionFailed(at=now, reason="step_failed_after_pivot", error=error)


def _start_step(d: SagaDefinition, s: ExecutionState, step: Step, now: float) -> Command:
    context = s.template_context()
    if step.when is not None:
        try:
            if not truthy(compile_expression(step.when).search(context)):
                return ev.StepSkipped(at=now, step=step.name)
        except TemplateError as error:
            return ev.StepFailed(at=now, step=step.name, phase="action", error=str(error))
    return _invoke(d, s, step, "action", 1, now)


def _next_attempt(
    d: SagaDefinition,
    s: ExecutionState,
    step: Step,
    attempts: Attempts,
    policy: RetryPolicy,
    now: float,
    past_pivot: bool,
) -> Command | float | None:
    """The move for a step whose last forward attempt ended: retry now, later, or give up."""
    if attempts.retry_due is not None:
        if now < attempts.retry_due:
            return attempts.retry_due
        return _invoke(d, s, step, "action", attempts.count + 1, now)
    if attempts.last_outcome in (None, "succeeded"):
        return None
    forward_only = past_pivot and step.name != d.graph.pivot
    if (attempts.retry_allowed or forward_only) and attempts.used() < policy.max_attempts:
        return _schedule(s, step, "action", attempts, policy, now)
    error = f"{attempts.error} (after {attempts.used()} attempts)"
    if forward_only:
        return ev.StepFailed(at=now, step=step.name, phase="action", error=error)
    return ev.CompensationTriggered(at=now, reason="step_failed", step=step.name, error=error)


def _schedule(
    s: ExecutionState, step: Step, phase: ev.Phase, attempts: Attempts, policy: RetryPolicy,
    now: float,
) -> ev.RetryScheduled:
    draw = jitter_draw(s.execution_id, step.name, phase, attempts.count)
    delay = max(policy.backoff(attempts.used(), draw), attempts.retry_after or 0.0)
    return ev.RetryScheduled(
        at=now, step=step.name, phase=phase, attempt=attempts.count + 1, due=now + delay
    )


def _invoke(
    d: SagaDefinition, s: ExecutionState, step: Step, phase: ev.Phase, attempt: int, now: float,
    recovering: bool = False,
) -> Command:
    call = step.compensation if phase == "compensation" and step.compensation else step.action
    try:
        request = _render(s, step, call, phase)
    except TemplateError as error:
        return ev.StepFailed(at=now, step=step.name, phase=phase, error=f"{phase}: {error}")
    return Invoke(step.name, phase, attempt, request, recovering)


def _render(s: ExecutionState, step: Step, call: Call, phase: ev.Phase) -> HttpRequest:
    context = s.template_context()
    return HttpRequest(
        service=call.service,
        method=call.method,
        path=render_path(call.path, context),
        body=render(call.body, context),
        headers=render_headers(call.headers, context),
        timeout=step.timeout,
        idempotency_key=f"{s.execution_id}:{step.name}:{phase}",
    )


# --- rollback --------------------------------------------------------------------------


def _rollback(d: SagaDefinition, s: ExecutionState, now: float) -> list[Command]:
    cap = d.limits.max_events + d.rollback_reserve
    if s.last_seq >= cap:
        # Only resumes of a stuck rollback get here: start nothing more.
        error = (f"history limit: {s.last_seq} events journaled, over limits.max_events "
                 f"{d.limits.max_events} plus the compensation reserve of {d.rollback_reserve}")
        return [] if s.inflight() else [_finish_rollback(d, s, now, error)]
    commands: list[Command] = []
    wake: float | None = None
    for step in reversed(d.steps):
        st = s.steps[step.name]
        if st.action.inflight or st.compensation.inflight:
            continue
        move = _undo_move(d, s, step, st, now)
        if isinstance(move, float):
            wake = move if wake is None else min(wake, move)
        elif move is not None:
            commands.append(move)
    if commands or wake is not None or s.inflight():
        return [*commands, WaitUntil(wake)] if wake is not None else commands
    return [_finish_rollback(d, s, now)]


def _undo_move(
    d: SagaDefinition, s: ExecutionState, step: Step, st: StepState, now: float
) -> Command | float | None:
    if st.status == "running" and not (_unknown(step, st) and step.compensation is not None):
        # A retry that was waiting will not be sent: the saga is rolling back. A step
        # without compensation has nothing to undo even when its outcome is unknown;
        # left running, it would hold back the undo of the steps it depends on.
        error = st.action.error or "not retried: the saga is compensating"
        return ev.StepFailed(at=now, step=step.name, phase="action", error=error)
    if not _needs_undo(step, st) or st.status == "compensation_failed":
        return None
    if not all(_settled(d.step_map[n], s.steps[n]) for n in d.graph.descendants[step.name]):
        return None
    if st.status != "succeeded" and st.action.last_outcome != "succeeded" and \
            d.graph.recovers_output(step.name):
        return _recover(d, s, step, st, now)
    return _compensate(d, s, step, st, now)


def _recover(
    d: SagaDefinition, s: ExecutionState, step: Step, st: StepState, now: float
) -> Command | float | None:
    """Re-send the action with its key to learn the output the compensation needs."""
    policy, attempts = step.compensation_retry, st.action
    if attempts.retry_due is not None and st.status == "compensating":
        if now < attempts.retry_due:
            return attempts.retry_due
        return _invoke(d, s, step, "action", attempts.count + 1, now, recovering=True)
    if st.status != "compensating":
        return _invoke(d, s, step, "action", attempts.count + 1, now, recovering=True)
    if st.recovery < policy.max_attempts and attempts.retry_allowed:
        return _schedule(s, step, "action", attempts, policy, now)
    error = f"could not learn the output to undo: {attempts.error}"
    return ev.StepFailed(at=now, step=step.name, phase="compensation", error=error)


def _compensate(
    d: SagaDefinition, s: ExecutionState, step: Step, st: StepState, now: float
) -> Command | float | None:
    attempts, policy = st.compensation, step.compensation_retry
    if attempts.retry_due is not None:
        if now < attempts.retry_due:
            return attempts.retry_due
        return _invoke(d, s, step, "compensation", attempts.count + 1, now)
    if attempts.last_outcome in (None, "succeeded") or attempts.count == attempts.budget_from:
        return _invoke(d, s, step, "compensation", attempts.count + 1, now)
    if attempts.retry_allowed and attempts.used() < policy.max_attempts:
        return _schedule(s, step, "compensation", attempts, policy, now)
    error = f"{attempts.error} (after {attempts.used()} attempts)"
    return ev.StepFailed(at=now, step=step.name, phase="compensation", error=error)


def _unknown(step: Step, st: StepState) -> bool:
    return st.action.last_outcome == "unknown" and st.status in ("running", "failed")


def _needs_undo(step: Step, st: StepState) -> bool:
    if step.compensation is None:
        return False
    if st.status in ("succeeded", "compensating", "compensation_failed"):
        return True
    return _unknown(step, st)


def _settled(step: Step, st: StepState) -> bool:
    """True when nothing of this step can still change or needs undoing first."""
    if st.action.inflight or st.compensation.inflight:
        return False
    return st.status == "compensated" or (not _needs_undo(step, st) and st.status != "running")


def _finish_rollback(d: SagaDefinition, s: ExecutionState, now: float,
                     limit: str | None = None) -> ev.Event:
    left = list(_not_undone(d, s))
    if limit is not None or s.reason == "history_limit":
        # Undone as far as it could be, but the saga did not run: it ends failed.
        error = limit or s.error or "history limit"
        if left:
            error = f"{error}; not compensated: {', '.join(left)}"
        return ev.ExecutionFailed(at=now, reason="history_limit", error=error,
                                  not_compensated=left)
    reason = s.reason if s.reason in ("step_failed", "cancelled", "deadline") else "step_failed"
    if not left:
        return ev.ExecutionCompensated(at=now, reason=reason, error=s.error)
    detail = ", ".join(left)
    error = f"{s.error}; not compensated: {detail}" if s.error else f"not compensated: {detail}"
    return ev.ExecutionFailed(at=now, reason=reason, error=error, not_compensated=left)


def _not_undone(d: SagaDefinition, s: ExecutionState) -> Iterator[str]:
    for step in d.steps:
        st = s.steps[step.name]
        if _needs_undo(step, st) and st.status != "compensated":
            yield step.name
