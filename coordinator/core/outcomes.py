"""Judging a reply: which HTTP results succeed, are retried, fail the business, or leave
the effect unknown.

Defaults: 2xx succeeds; 408, 429, 5xx and a refused connection are retryable; a
timeout or a connection lost after the request was sent leaves the outcome
unknown (retryable, and compensated if the saga rolls back); any other status is
a business failure. A step's ``retry_on`` and ``success_status`` replace those
sets. A compensation is done on 2xx or 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from coordinator.core.definition import StatusSpec, Step
from coordinator.core.events import (
    CompensationFailed,
    CompensationSucceeded,
    FailureOutcome,
    StepAttemptFailed,
    StepAttemptSucceeded,
)

FailureKind = Literal["timeout", "connection_refused", "connection_lost"]
DEFAULT_RETRYABLE: tuple[StatusSpec, ...] = (408, 429, "5xx", "timeout", "connection")
DEFAULT_SUCCESS: tuple[StatusSpec, ...] = ("2xx",)
COMPENSATION_DONE: tuple[StatusSpec, ...] = ("2xx", 404)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the invoker observed for one attempt; ``failure`` set when no status came back."""

    status_code: int | None = None
    body: Any = None
    failure: FailureKind | None = None
    error: str | None = None
    retry_after: float | None = None


def _matches(code: int, specs: tuple[StatusSpec, ...]) -> bool:
    for spec in specs:
        if spec == code or (isinstance(spec, str) and spec[0] == str(code)[0] and spec[1:] == "xx"):
            return True
    return False


def classify(
    reply: Reply, success: tuple[StatusSpec, ...], retryable: tuple[StatusSpec, ...]
) -> tuple[Literal["succeeded"] | FailureOutcome, bool]:
    """Return ``(outcome, retry_allowed)`` for one reply."""
    if reply.failure is not None:
        word = "connection" if reply.failure.startswith("connection") else "timeout"
        unknown = reply.failure != "connection_refused"
        return ("unknown" if unknown else "retryable"), word in retryable
    code = reply.status_code or 0
    if _matches(code, success):
        return "succeeded", False
    if _matches(code, retryable):
        return "retryable", True
    return "business_failure", False


def describe(reply: Reply) -> str:
    if reply.failure is not None:
        return reply.error or reply.failure.replace("_", " ")
    detail = reply.body.get("detail") if isinstance(reply.body, dict) else reply.body
    text = f"HTTP {reply.status_code}"
    return f"{text}: {detail}"[:500] if detail else text


def classify_action(step: Step, reply: Reply) -> tuple[Literal["succeeded"] | FailureOutcome,
                                                     bool]:
    """:func:`classify` with the step's own success and retryable statuses."""
    return classify(reply, step.success_status or DEFAULT_SUCCESS,
                    step.retry_on or DEFAULT_RETRYABLE)


def classify_compensation(reply: Reply) -> tuple[Literal["succeeded"] | FailureOutcome, bool]:
    return classify(reply, COMPENSATION_DONE, DEFAULT_RETRYABLE)


def judge_action(
    step: Step, attempt: int, reply: Reply, at: float
) -> StepAttemptSucceeded | StepAttemptFailed:
    outcome, retry_allowed = classify_action(step, reply)
    if outcome == "succeeded":
        return StepAttemptSucceeded(
            at=at, step=step.name, attempt=attempt, status_code=reply.status_code, output=reply.body
        )
    return StepAttemptFailed(
        at=at, step=step.name, attempt=attempt, outcome=outcome, retry_allowed=retry_allowed,
        error=describe(reply), status_code=reply.status_code, retry_after=reply.retry_after,
    )


def judge_compensation(
    step: Step, attempt: int, reply: Reply, at: float
) -> CompensationSucceeded | CompensationFailed:
    outcome, retry_allowed = classify_compensation(reply)
    if outcome == "succeeded":
        return CompensationSucceeded(
            at=at, step=step.name, attempt=attempt, status_code=reply.status_code
        )
    return CompensationFailed(
        at=at, step=step.name, attempt=attempt, outcome=outcome, retry_allowed=retry_allowed,
        error=describe(reply), status_code=reply.status_code, retry_after=reply.retry_after,
    )
