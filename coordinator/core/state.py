"""Execution state as rebuilt by ``replay``: plain mutable records, one per execution.

Only ``replay.apply`` mutates them. Public statuses are kept as the API shows
them; the private fields hold what ``decide`` needs to choose the next move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ExecutionStatus = Literal["running", "compensating", "completed", "compensated", "failed"]
StepStatus = Literal[
    "pending",
    "running",
    "succeeded",
    "failed",
    "skipped",
    "compensating",
    "compensated",
    "compensation_failed",
]
Outcome = Literal["succeeded", "retryable", "business_failure", "unknown"]
TERMINAL: frozenset[str] = frozenset({"completed", "compensated", "failed"})


@dataclass(slots=True)
class Attempts:
    """One phase (action or compensation) of a step: its attempts and pending retry."""

    count: int = 0
    budget_from: int = 0  # attempts made before the last resume do not use up the budget
    inflight: bool = False
    retry_due: float | None = None
    last_outcome: Outcome | None = None
    retry_allowed: bool = False
    retry_after: float | None = None
    status_code: int | None = None
    error: str | None = None

    def used(self) -> int:
        return self.count - self.budget_from


@dataclass(slots=True)
class StepState:
    name: str
    status: StepStatus = "pending"
    action: Attempts = field(default_factory=Attempts)
    compensation: Attempts = field(default_factory=Attempts)
    recovery: int = 0  # action re-sends made to learn an unknown outcome's output
    output: Any = None
    error: str | None = None
    started_at: float | None = None
    ended_at: float | None = None

    @property
    def outcome_unknown(self) -> bool:
        return self.status not in ("succeeded", "skipped") and self.action.last_outcome == "unknown"

    @property
    def compensation_view(self) -> dict[str, Any] | None:
        """The API's ``compensation`` field: null until compensation began."""
        if self.status not in ("compensating", "compensated", "compensation_failed"):
            return None
        return {
            "status": self.status,
            "attempts": self.compensation.count,
            "error": self.compensation.error,
        }


@dataclass(slots=True)
class ExecutionState:
    execution_id: str = ""
    saga: str = ""
    version: int = 0
    input: Any = None
    status: ExecutionStatus = "running"
    reason: str | None = None
    error: str | None = None
    output: Any = None
    created_at: float = 0.0
    updated_at: float = 0.0
    deadline: float | None = None
    trace: dict[str, str] | None = None
    host: str | None = None
    node_id: str | None = None
    cancel_reason: str | None = None
    rolled_back: bool = False  # compensation was triggered at least once
    failed_step: str | None = None
    not_compensated: list[str] = field(default_factory=list)
    steps: dict[str, StepState] = field(default_factory=dict)
    last_seq: int = 0  # events applied so far: the history's length
    action_attempts: int = 0  # forward action attempts of every step (for limits.max_attempts)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def inflight(self) -> bool:
        return any(s.action.inflight or s.compensation.inflight for s in self.steps.values())

    def template_context(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "steps": {
                name: {"output": step.output, "status": step.status}
                for name, step in self.steps.items()
            },
            "execution": {"id": self.execution_id, "saga": self.saga, "version": self.version},
        }
