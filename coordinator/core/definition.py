"""Saga definitions: the frozen, fully resolved form of a YAML file under ``sagas/``.

Raw files may leave fields out; :class:`SagaDefinition` fills them in one place
(``_resolve_defaults``) so every later reader sees explicit values: each step's
``depends_on``, ``timeout``, ``retry`` and ``compensation_retry``.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from coordinator.core.durations import Duration

if TYPE_CHECKING:
    from coordinator.core.graph import Graph

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
STEP_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
Placement = Literal["shared", "dedicated"]

BUILTIN_RETRY: dict[str, Any] = {
    "max_attempts": 3,
    "initial_backoff": 0.1,
    "max_backoff": 10.0,
    "multiplier": 2.0,
    "jitter": 0.2,
}
BUILTIN_COMPENSATION_RETRY: dict[str, Any] = {
    **BUILTIN_RETRY,
    "max_attempts": 10,
    "initial_backoff": 0.2,
    "max_backoff": 30.0,
}
BUILTIN_TIMEOUT = 5.0
# Definition limits, checked by ``validation.check_definition`` (the loader rejects beyond
# them): a saga is a unit of business work, not a workflow engine's batch job.
MAX_STEPS = 200
MAX_PARALLEL_WIDTH = 64
# History limits, per saga under ``limits:`` (documented in docs/saga-format.md).
DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_ATTEMPTS = 1_000


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RetryPolicy(Frozen):
    """When and how often an attempt is tried again.

    Defaults (documented in README): 3 attempts, 100 ms first backoff doubling up
    to 10 s, with +/-20 % jitter. ``backoff`` takes the jitter draw as an argument
    so the policy itself stays deterministic.
    """

    max_attempts: int = Field(default=3, ge=1, le=10_000)
    initial_backoff: Duration = 0.1
    max_backoff: Duration = 10.0
    multiplier: float = Field(default=2.0, ge=1.0, le=100.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)

    def backoff(self, failed_attempt: int, draw: float) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based); ``draw`` is in [0, 1)."""
        base = self.initial_backoff * self.multiplier ** max(failed_attempt - 1, 0)
        base = min(base, self.max_backoff)
        return max(0.0, base * (1.0 + self.jitter * (2.0 * draw - 1.0)))


class Call(Frozen):
    """One HTTP request to a named service; strings may hold ``${...}`` placeholders."""

    service: str = Field(pattern=NAME_PATTERN)
    method: HttpMethod = "POST"
    path: str
    body: JsonValue = None
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("path")
    @classmethod
    def _path_is_relative(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"path {value!r} must start with '/' (services are named, never URLs)")
        return value


StatusSpec = int | str


def _check_status_spec(value: StatusSpec, words: frozenset[str]) -> StatusSpec:
    if isinstance(value, int):
        if not 100 <= value <= 599:
            raise ValueError(f"status code {value} is not between 100 and 599")
        return value
    if value in words or (len(value) == 3 and value[0] in "12345" and value[1:] == "xx"):
        return value
    allowed = ", ".join(sorted(words | {"1xx", "2xx", "3xx", "4xx", "5xx"}))
    raise ValueError(f"{value!r} is neither a status code nor one of {allowed}")


class Step(Frozen):
    """One step: an action, its optional compensation, and how both are retried."""

    name: str = Field(pattern=STEP_NAME_PATTERN)
    depends_on: tuple[str, ...]
    when: str | None = None
    timeout: Duration = Field(gt=0)
    retry: RetryPolicy
    compensation_retry: RetryPolicy
    retry_on: tuple[StatusSpec, ...] | None = None
    success_status: tuple[StatusSpec, ...] | None = None
    pivot: bool = False
    action: Call
    compensation: Call | None = None

    @field_validator("retry_on")
    @classmethod
    def _check_retry_on(cls, value: tuple[StatusSpec, ...] | None) -> tuple[StatusSpec, ...] | None:
        words = frozenset({"timeout", "connection"})
        return None if value is None else tuple(_check_status_spec(v, words) for v in value)

    @field_validator("success_status")
    @classmethod
    def _check_success(cls, value: tuple[StatusSpec, ...] | None) -> tuple[StatusSpec, ...] | None:
        return None if value is None else tuple(_check_status_spec(v, frozenset()) for v in value)


class Defaults(Frozen):
    timeout: Duration = Field(default=BUILTIN_TIMEOUT, gt=0)
    retry: RetryPolicy = RetryPolicy(**BUILTIN_RETRY)
    compensation_retry: RetryPolicy = RetryPolicy(**BUILTIN_COMPENSATION_RETRY)


class HistoryLimits(Frozen):
    """How long one execution's history may grow before it ends ``failed`` (``history_limit``).

    ``max_events`` bounds the journal of the forward run; compensation gets a reserve
    of events on top (``decide.rollback_reserve``) so that reaching the limit still
    undoes what was done. ``max_attempts`` bounds the action attempts of every step
    together, across resumes (each step's ``retry.max_attempts`` bounds one step once).
    """

    max_events: int = Field(default=DEFAULT_MAX_EVENTS, ge=5, le=1_000_000)
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=1_000_000)


class SagaDefinition(Frozen):
    """A saga as loaded: immutable, with every default resolved into its steps."""

    model_config = ConfigDict(frozen=True, extra="forbid", ignored_types=(cached_property,))

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    description: str = ""
    placement: Placement = "shared"
    input_schema: dict[str, Any] | None = None
    timeout: Duration | None = Field(default=None, gt=0)
    defaults: Defaults = Defaults()
    limits: HistoryLimits = HistoryLimits()
    steps: tuple[Step, ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _resolve_defaults(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list):
            return raw
        given = raw.get("defaults") or {}
        resolved = _resolved_defaults(given if isinstance(given, dict) else {})
        # An invalid default is reported once, under ``defaults``; steps inherit the
        # built-in value instead so the same error is not repeated for every step.
        inherited = {key: _valid_or(key, value) for key, value in resolved.items()}
        steps: list[Any] = []
        previous: str | None = None
        for step in raw["steps"]:
            if isinstance(step, dict):
                step = _resolved_step(step, previous, inherited)
                previous = step["name"] if isinstance(step.get("name"), str) else previous
            steps.append(step)
        defaults = {**given, **resolved} if isinstance(given, dict) else given
        return {**raw, "defaults": defaults, "steps": steps}

    @cached_property
    def step_map(self) -> dict[str, Step]:
        return {step.name: step for step in self.steps}

    @cached_property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    @cached_property
    def rollback_reserve(self) -> int:
        """Events a rollback may journal beyond ``limits.max_events``: enough for every
        compensation to use all its retries (and to re-send an action whose output it
        needs), and per step four more: the last forward round may overshoot the limit
        by a start and a reply, then the step is given up and its reply may still land."""
        reserve = 6 + 4 * len(self.steps)
        for step in self.steps:
            if step.compensation is not None:
                # Per attempt: started, failed, retry scheduled; then one give-up.
                per_phase = 3 * step.compensation_retry.max_attempts + 1
                reserve += per_phase * (2 if self.graph.recovers_output(step.name) else 1)
        return reserve

    @cached_property
    def graph(self) -> Graph:
        from coordinator.core.graph import build_graph

        return build_graph(self.steps)


def _resolved_defaults(given: dict[str, Any]) -> dict[str, Any]:
    return {
        "timeout": given.get("timeout", BUILTIN_TIMEOUT),
        "retry": _merged(BUILTIN_RETRY, given.get("retry")),
        "compensation_retry": _merged(BUILTIN_COMPENSATION_RETRY, given.get("compensation_retry")),
    }


def _valid_or(key: str, value: Any) -> Any:
    try:
        Defaults.model_validate({key: value})
    except ValidationError:
        return _BUILTIN_DEFAULTS[key]
    return value


def _resolved_step(step: dict[str, Any], previous: str | None,
                   inherited: dict[str, Any]) -> dict[str, Any]:
    return {
        "depends_on": [previous] if previous else [],
        "timeout": inherited["timeout"],
        **step,
        "retry": _merged(inherited["retry"], step.get("retry")),
        "compensation_retry": _merged(inherited["compensation_retry"],
                                      step.get("compensation_retry")),
    }


def _merged(base: dict[str, Any] | RetryPolicy, override: object) -> Any:
    """Overlay a partial retry mapping on ``base``; anything else is left for pydantic to reject."""
    if isinstance(base, RetryPolicy):
        base = base.model_dump()
    if override is None:
        return dict(base)
    if isinstance(override, RetryPolicy):
        return override
    if not isinstance(override, dict):
        return override
    return {**base, **override}


_BUILTIN_DEFAULTS: dict[str, Any] = {
    "timeout": BUILTIN_TIMEOUT,
    "retry": BUILTIN_RETRY,
    "compensation_retry": BUILTIN_COMPENSATION_RETRY,
}
