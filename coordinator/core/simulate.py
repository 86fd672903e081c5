"""A synchronous, in-memory driver of the core for tests and what-if runs.

It plays the runner's part with no I/O: a ``respond`` function stands in for the
services, and time moves only when every attempt has answered. This is the
given/expect harness the core's tests are written in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coordinator.core import events as ev
from coordinator.core.commands import Invoke, WaitUntil
from coordinator.core.decide import decide, interrupted
from coordinator.core.definition import SagaDefinition
from coordinator.core.outcomes import Reply, judge_action, judge_compensation
from coordinator.core.replay import apply, replay
from coordinator.core.state import ExecutionState

Respond = Callable[[Invoke], Reply]


def ok(body: Any = None) -> Reply:
    return Reply(status_code=200, body=body if body is not None else {"id": "x"})


@dataclass
class Simulation:
    definition: SagaDefinition
    respond: Respond
    now: float = 1_000.0
    input: Any = field(default_factory=dict)
    execution_id: str = "exec-1"
    journal: list[ev.Event] = field(default_factory=list)
    inflight: list[Invoke] = field(default_factory=list)
    sent: list[Invoke] = field(default_factory=list)
    wake: float | None = None

    def __post_init__(self) -> None:
        deadline = self.now + self.definition.timeout if self.definition.timeout else None
        self.state = ExecutionState()
        self.record(ev.ExecutionStarted(
            at=self.now, execution_id=self.execution_id, saga=self.definition.name,
            version=self.definition.version, input=self.input, deadline=deadline))

    def record(self, event: ev.Event) -> None:
        self.journal.append(event)
        apply(self.definition, self.state, event)

    def decide_round(self) -> bool:
        """Journal one round of decisions and sends; True when anything happened."""
        self.wake = None
        acted = False
        for command in decide(self.definition, self.state, self.now):
            if isinstance(command, WaitUntil):
                self.wake = command.at
            elif isinstance(command, Invoke):
                self.record(command.started(self.now))
                self.inflight.append(command)
                self.sent.append(command)
                acted = True
            else:
                self.record(command)
                acted = True
        return acted

    def deliver(self, index: int = 0, reply: Reply | None = None) -> None:
        invoke = self.inflight.pop(index)
        reply = reply if reply is not None else self.respond(invoke)
        step = self.definition.step_map[invoke.step]
        judge = judge_compensation if invoke.phase == "compensation" else judge_action
        self.record(judge(step, invoke.attempt, reply, self.now))

    def crash(self) -> None:
        """Lose the host: in-flight replies vanish, state is rebuilt from the journal."""
        self.inflight.clear()
        self.state = replay(self.definition, self.journal)
        for event in interrupted(self.state, self.now):
            self.record(event)

    def cancel(self, reason: str = "by test") -> None:
        self.record(ev.CancelRequested(at=self.now, reason=reason))

    def resume(self) -> None:
        self.record(ev.ResumeRequested(at=self.now))

    def run(self, max_rounds: int = 10_000) -> ExecutionState:
        for _ in range(max_rounds):
            if self.state.terminal:
                return self.state
            if self.decide_round():
                continue
            if self.inflight:
                while self.inflight:
                    self.deliver()
            elif self.wake is not None:
                self.now = max(self.now, self.wake)
            else:
                raise AssertionError(f"stuck: no command and nothing in flight: {self.state}")
        raise AssertionError("did not finish")

    def types(self) -> list[str]:
        return [event.type for event in self.journal]
