"""Journal events: every state transition of an execution, as a discriminated union.

Events are facts. ``replay`` folds them into state without deciding anything;
``decide`` produces the events that record its decisions (skip, retry, give up,
roll back, finish) alongside the effects the runner performs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter

Phase = Literal["action", "compensation"]
FailureOutcome = Literal["retryable", "business_failure", "unknown"]
RollbackReason = Literal["step_failed", "cancelled", "deadline", "history_limit"]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    at: float = Field(description="seconds since the epoch, from the runner's clock")


class ExecutionStarted(_Event):
    type: Literal["execution_started"] = "execution_started"
    execution_id: str
    saga: str
    version: int
    input: JsonValue
    deadline: float | None = None
    trace: dict[str, str] | None = None


class HostAssigned(_Event):
    """A host took ownership; recorded so status shows where an execution runs."""

    type: Literal["host_assigned"] = "host_assigned"
    host: str
    node_id: str | None = None


class StepSkipped(_Event):
    type: Literal["step_skipped"] = "step_skipped"
    step: str


class StepAttemptStarted(_Event):
    type: Literal["step_attempt_started"] = "step_attempt_started"
    step: str
    attempt: int
    recovering: bool = False


class StepAttemptSucceeded(_Event):
    type: Literal["step_attempt_succeeded"] = "step_attempt_succeeded"
    step: str
    attempt: int
    status_code: int | None = None
    output: JsonValue = None


class StepAttemptFailed(_Event):
    type: Literal["step_attempt_failed"] = "step_attempt_failed"
    step: str
    attempt: int
    outcome: FailureOutcome
    retry_allowed: bool
    error: str
    status_code: int | None = None
    retry_after: float | None = None


class RetryScheduled(_Event):
    type: Literal["retry_scheduled"] = "retry_scheduled"
    step: str
    phase: Phase
    attempt: int
    due: float


class StepFailed(_Event):
    """The step is given up in ``phase``: its retries ran out or it cannot be retried."""

    type: Literal["step_failed"] = "step_failed"
    step: str
    phase: Phase
    error: str


class CompensationStarted(_Event):
    type: Literal["compensation_started"] = "compensation_started"
    step: str
    attempt: int


class CompensationSucceeded(_Event):
    type: Literal["compensation_succeeded"] = "compensation_succeeded"
    step: str
    attempt: int
    status_code: int | None = None


class CompensationFailed(_Event):
    type: Literal["compensation_failed"] = "compensation_failed"
    step: str
    attempt: int
    outcome: FailureOutcome
    retry_allowed: bool
    error: str
    status_code: int | None = None
    retry_after: float | None = None


class CompensationTriggered(_Event):
    type: Literal["compensation_triggered"] = "compensation_triggered"
    reason: RollbackReason = "step_failed"
    step: str | None = None
    error: str | None = None


class CancelRequested(_Event):
    type: Literal["cancel_requested"] = "cancel_requested"
    reason: str | None = None


class DeadlinePassed(_Event):
    type: Literal["deadline_passed"] = "deadline_passed"


class ResumeRequested(_Event):
    type: Literal["resume_requested"] = "resume_requested"


class ExecutionCompleted(_Event):
    type: Literal["execution_completed"] = "execution_completed"
    output: JsonValue = None


class ExecutionCompensated(_Event):
    type: Literal["execution_compensated"] = "execution_compensated"
    reason: RollbackReason
    error: str | None = None


class ExecutionFailed(_Event):
    type: Literal["execution_failed"] = "execution_failed"
    reason: str
    error: str
    not_compensated: list[str] = Field(default_factory=list)


Event = Annotated[
    ExecutionStarted
    | HostAssigned
    | StepSkipped
    | StepAttemptStarted
    | StepAttemptSucceeded
    | StepAttemptFailed
    | RetryScheduled
    | StepFailed
    | CompensationStarted
    | CompensationSucceeded
    | CompensationFailed
    | CompensationTriggered
    | CancelRequested
    | DeadlinePassed
    | ResumeRequested
    | ExecutionCompleted
    | ExecutionCompensated
    | ExecutionFailed,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
TERMINAL_EVENT_TYPES = frozenset(
    {"execution_completed", "execution_compensated", "execution_failed"}
)


def event_from_json(data: str | bytes) -> Event:
    return EVENT_ADAPTER.validate_json(data)


def event_from_dict(data: dict[str, Any]) -> Event:
    return EVENT_ADAPTER.validate_python(data)


def event_to_json(event: Event) -> str:
    return event.model_dump_json()
