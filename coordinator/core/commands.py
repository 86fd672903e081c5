"""What ``decide`` asks the runner to do besides journaling its decision events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordinator.core.events import (
    CompensationStarted,
    Event,
    Phase,
    StepAttemptStarted,
)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A fully rendered call; service headers (secrets) are added by the invoker, not here."""

    service: str
    method: str
    path: str
    body: Any
    headers: dict[str, str]
    timeout: float
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class Invoke:
    """Send one attempt. The runner journals :meth:`started` before sending."""

    step: str
    phase: Phase
    attempt: int
    request: HttpRequest
    recovering: bool = False

    def started(self, at: float) -> StepAttemptStarted | CompensationStarted:
        if self.phase == "compensation":
            return CompensationStarted(at=at, step=self.step, attempt=self.attempt)
        return StepAttemptStarted(
            at=at, step=self.step, attempt=self.attempt, recovering=self.recovering
        )


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Nothing to do before ``at`` unless a reply or a request (cancel) arrives."""

    at: float


Command = Event | Invoke | WaitUntil
