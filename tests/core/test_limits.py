"""History limits (``limits: {max_events, max_attempts}``), the parallel width of a
definition, and a cancel that arrives while a step without compensation waits to retry."""

from __future__ import annotations

from coordinator.core import events as ev
from coordinator.core.commands import Invoke
from coordinator.core.definition import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_EVENTS
from coordinator.core.graph import parallel_width
from coordinator.core.outcomes import Reply
from coordinator.core.simulate import Simulation, ok
from tests.core.conftest import saga
from tests.core.test_decide import DIAMOND, WITH_PIVOT

TWO = """
steps:
  - {name: a, action: {service: s, path: /a}, compensation: {service: s, path: /a/undo}}
  - {name: b, retry: {max_attempts: 50}, action: {service: s, path: /b}}
"""


def always_503_on(step: str):  # type: ignore[no-untyped-def]
    def respond(invoke: Invoke) -> Reply:
        return Reply(status_code=503) if invoke.step == step and invoke.phase == "action" \
            else ok({"id": invoke.step})

    return respond


def test_defaults_are_documented_values() -> None:
    limits = saga(DIAMOND).limits
    assert (limits.max_events, limits.max_attempts) == (DEFAULT_MAX_EVENTS, DEFAULT_MAX_ATTEMPTS)
    assert (DEFAULT_MAX_EVENTS, DEFAULT_MAX_ATTEMPTS) == (10_000, 1_000)


def test_max_attempts_reached_compensates_then_fails_with_history_limit() -> None:
    sim = Simulation(saga(TWO, limits={"max_attempts": 6}), always_503_on("b"))
    state = sim.run()
    assert state.status == "failed" and state.reason == "history_limit"
    assert state.error is not None
    assert state.error.startswith("history limit: 6 action attempts made, "
                                  "limits.max_attempts is 6")
    assert state.action_attempts == 6  # a once, b five times: the seventh is never sent
    assert state.steps["a"].status == "compensated"
    assert state.steps["b"].status == "failed"
    assert state.not_compensated == []
    assert sim.types()[-1] == "execution_failed"


def test_max_events_reached_compensates_then_fails_with_history_limit() -> None:
    sim = Simulation(saga(TWO, limits={"max_events": 20}), always_503_on("b"))
    state = sim.run()
    assert state.status == "failed" and state.reason == "history_limit"
    assert state.error is not None and "limits.max_events is 20" in state.error
    triggered = next(e for e in sim.journal if isinstance(e, ev.CompensationTriggered))
    assert triggered.reason == "history_limit"
    assert sim.journal.index(triggered) >= 20  # the forward run used its whole budget
    # The reserve let the compensation run although the history was past max_events.
    assert state.steps["a"].status == "compensated"
    assert len(sim.journal) <= 20 + sim.definition.rollback_reserve


def test_history_limit_past_the_pivot_fails_without_compensating() -> None:
    definition = saga(WITH_PIVOT.replace("max_attempts: 4", "max_attempts: 100"),
                      limits={"max_attempts": 5})
    sim = Simulation(definition, always_503_on("notify"))
    state = sim.run()
    assert state.status == "failed" and state.reason == "history_limit"
    assert state.steps["reserve"].status == "succeeded"
    assert not any(i.phase == "compensation" for i in sim.sent)
    assert state.action_attempts == 5


def test_a_resumed_rollback_stops_at_the_reserve() -> None:
    text = TWO.replace("path: /a/undo}", "path: /a/undo}, compensation_retry: {max_attempts: 2}")
    definition = saga(text, limits={"max_events": 12})

    def respond(invoke: Invoke) -> Reply:
        return Reply(status_code=503) if invoke.step == "b" or invoke.phase == "compensation" \
            else ok()

    sim = Simulation(definition, respond)
    for _ in range(20):
        state = sim.run()
        assert state.status == "failed"
        if state.error and "compensation reserve" in state.error:
            break
        sim.resume()
    else:
        raise AssertionError("resumes grew the history without end")
    assert state.reason == "history_limit" and state.not_compensated == ["a"]
    assert len(sim.journal) <= 12 + definition.rollback_reserve + len(definition.steps) + 2


def test_cancel_while_a_step_without_compensation_waits_to_retry() -> None:
    # b times out (outcome unknown) and has no compensation: while its retry waits, a
    # cancel must give b up and still undo a, not leave b running and a undone.
    sim = Simulation(saga(TWO), lambda i: Reply(failure="timeout") if i.step == "b" else ok())
    sim.decide_round()
    sim.deliver()
    sim.decide_round()
    sim.deliver()
    sim.decide_round()
    assert sim.types()[-1] == "retry_scheduled"
    sim.cancel()
    state = sim.run()
    assert state.status == "compensated" and state.reason == "cancelled"
    assert state.steps["a"].status == "compensated"
    assert state.steps["b"].status == "failed"


def test_parallel_width() -> None:
    assert parallel_width(saga(DIAMOND).graph) == 2  # {a, b} or {c, ...}: d follows c
    assert parallel_width(saga(TWO).graph) == 1
    fan = "steps:\n" + "".join(
        f"  - {{name: s{i}, depends_on: [], action: {{service: s, path: /x}}}}\n" for i in range(5))
    fan += "  - {name: j, depends_on: [s0, s1], action: {service: s, path: /j}}\n"
    fan += "  - {name: k, depends_on: [j, s4], action: {service: s, path: /k}}\n"
    # s0..s4 at once; j and k each follow some of them
    assert parallel_width(saga(fan).graph) == 5
