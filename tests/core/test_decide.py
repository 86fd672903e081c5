"""Given/expect scenarios for the pure core, driven by ``Simulation`` (no I/O)."""

from __future__ import annotations

from coordinator.core import events as ev
from coordinator.core.commands import Invoke
from coordinator.core.decide import decide, jitter_draw
from coordinator.core.outcomes import Reply
from coordinator.core.simulate import Simulation, ok
from tests.core.conftest import saga

DIAMOND = """
steps:
  - {name: a, action: {service: s, path: /a},
     compensation: {service: s, method: DELETE, path: "/a/${steps.a.output.id}"}}
  - {name: b, depends_on: [], action: {service: s, path: /b},
     compensation: {service: s, path: /b/undo}}
  - {name: c, depends_on: [a, b], action: {service: s, path: /c},
     compensation: {service: s, path: "/c/${input.order}"}}
  - name: d
    action: {service: s, path: /d}
"""

WITH_PIVOT = """
steps:
  - {name: reserve, action: {service: s, path: /r}, compensation: {service: s, path: /r/undo}}
  - {name: confirm, pivot: true, action: {service: s, path: /confirm}}
  - {name: notify, retry: {max_attempts: 4}, action: {service: s, path: /notify}}
"""


def business(_: Invoke) -> Reply:
    return Reply(status_code=422, body={"detail": "refused"})


def replies(table: dict[tuple[str, str, int], Reply]):  # type: ignore[no-untyped-def]
    def respond(invoke: Invoke) -> Reply:
        return table.get((invoke.step, invoke.phase, invoke.attempt), ok({"id": invoke.step}))

    return respond


def sent(sim: Simulation) -> list[tuple[str, str]]:
    return [(i.step, i.phase) for i in sim.sent]


def test_success_runs_parallel_roots_then_joins() -> None:
    sim = Simulation(saga(DIAMOND), replies({}), input={"order": "o/1"})
    first = decide(sim.definition, sim.state, sim.now)
    assert {c.step for c in first if isinstance(c, Invoke)} == {"a", "b"}
    state = sim.run()
    assert state.status == "completed"
    assert state.output == {n: {"id": n} for n in "abcd"}
    assert sent(sim) == [("a", "action"), ("b", "action"), ("c", "action"), ("d", "action")]


def test_business_failure_compensates_in_reverse_dependency_order() -> None:
    sim = Simulation(saga(DIAMOND), replies({("d", "action", 1): business(None)}),  # type: ignore[arg-type]
                     input={"order": "o/1"})
    state = sim.run()
    assert state.status == "compensated" and state.reason == "step_failed"
    undo = [i for i in sim.sent if i.phase == "compensation"]
    assert next(i.step for i in undo) == "c"
    assert {i.step for i in undo[1:]} == {"a", "b"}
    assert undo[0].request.path == "/c/o%2F1"
    assert undo[1].request.path == "/a/a" or undo[2].request.path == "/a/a"
    assert state.steps["d"].status == "failed"
    assert all(state.steps[n].status == "compensated" for n in "abc")


def test_failed_step_is_not_compensated_and_never_started_steps_stay_pending() -> None:
    sim = Simulation(saga(DIAMOND), replies({("c", "action", 1): business(None)}),  # type: ignore[arg-type]
                     input={"order": "1"})
    state = sim.run()
    assert ("c", "compensation") not in sent(sim)
    assert state.steps["d"].status == "pending"
    assert state.steps["c"].status == "failed"


def test_retryable_then_success_honours_retry_after_and_backoff() -> None:
    table = {("a", "action", 1): Reply(status_code=503, retry_after=3.0),
             ("a", "action", 2): Reply(status_code=500)}
    sim = Simulation(saga(DIAMOND), replies(table), input={"order": "1"})
    state = sim.run()
    assert state.status == "completed"
    retries = [e for e in sim.journal if isinstance(e, ev.RetryScheduled)]
    assert [r.attempt for r in retries] == [2, 3]
    assert retries[0].due - retries[0].at >= 3.0
    second = retries[1].due - retries[1].at
    assert 0.2 * 0.8 <= second <= 0.2 * 1.2  # 100 ms x 2.0, jitter 0.2


def test_exhausted_retries_trigger_compensation() -> None:
    always_503 = {("b", "action", n): Reply(status_code=503) for n in range(1, 4)}
    sim = Simulation(saga(DIAMOND), replies(always_503), input={"order": "1"})
    state = sim.run()
    assert state.status == "compensated"
    assert state.steps["b"].action.count == 3
    assert state.steps["a"].status == "compensated"


def test_timeout_leaves_outcome_unknown_and_recovers_output_before_undo() -> None:
    table = {("a", "action", n): Reply(failure="timeout") for n in range(1, 4)}
    sim = Simulation(saga(DIAMOND), replies(table), input={"order": "1"})
    state = sim.run()
    # a's compensation reads a's own output: the action is re-sent with the same key
    recover = [i for i in sim.sent if i.recovering]
    assert [i.step for i in recover] == ["a"]
    assert recover[0].request.idempotency_key == "exec-1:a:action"
    assert state.steps["a"].status == "compensated"
    assert state.status == "compensated"


def test_unknown_outcome_without_own_output_compensates_directly() -> None:
    table = {("c", "action", n): Reply(failure="connection_lost") for n in range(1, 4)}
    sim = Simulation(saga(DIAMOND), replies(table), input={"order": "1"})
    state = sim.run()
    assert not any(i.recovering for i in sim.sent)
    assert state.steps["c"].status == "compensated"


def test_recovery_refused_means_nothing_to_undo() -> None:
    table = {("a", "action", n): Reply(failure="timeout") for n in range(1, 4)}
    table[("a", "action", 4)] = Reply(status_code=404)
    sim = Simulation(saga(DIAMOND), replies(table), input={"order": "1"})
    state = sim.run()
    assert ("a", "compensation") not in sent(sim)
    assert state.steps["a"].status == "failed"
    assert state.status == "compensated"


def test_skipped_step_is_never_compensated() -> None:
    text = DIAMOND.replace("name: d\n", "name: d\n    when: input.car\n    compensation: "
                           "{service: s, path: /d/undo}\n")
    definition = saga(text + "  - {name: e, action: {service: s, path: /e}}\n")
    sim = Simulation(definition, replies({("e", "action", 1): business(None)}),  # type: ignore[arg-type]
                     input={"order": "1", "car": False})
    state = sim.run()
    assert state.steps["d"].status == "skipped"
    assert ("d", "compensation") not in sent(sim)
    assert state.status == "compensated"


def test_failure_after_pivot_is_retried_forward_then_fails() -> None:
    table = {("notify", "action", n): business(None) for n in range(1, 5)}  # type: ignore[arg-type]
    sim = Simulation(saga(WITH_PIVOT), replies(table))
    state = sim.run()
    assert state.status == "failed" and state.reason == "step_failed_after_pivot"
    assert state.steps["notify"].action.count == 4
    assert not any(i.phase == "compensation" for i in sim.sent)


def test_failure_after_pivot_recovers_forward() -> None:
    table = {("notify", "action", 1): business(None), ("notify", "action", 2): Reply(503)}  # type: ignore[arg-type]
    state = Simulation(saga(WITH_PIVOT), replies(table)).run()
    assert state.status == "completed"


def test_resume_after_forward_failure_retries_the_failed_step() -> None:
    table = {("notify", "action", n): business(None) for n in range(1, 5)}  # type: ignore[arg-type]
    sim = Simulation(saga(WITH_PIVOT), replies(table))
    assert sim.run().status == "failed"
    sim.resume()
    state = sim.run()
    assert state.status == "completed"
    assert state.steps["notify"].action.count == 5


def test_cancel_compensates_and_is_refused_after_pivot() -> None:
    sim = Simulation(saga(WITH_PIVOT), replies({}))
    sim.decide_round()
    sim.deliver()  # reserve succeeded
    sim.cancel()
    state = sim.run()
    assert state.status == "compensated" and state.reason == "cancelled"
    assert state.steps["reserve"].status == "compensated"

    late = Simulation(saga(WITH_PIVOT), replies({}))
    for _ in range(2):
        late.decide_round()
        late.deliver()
    late.cancel()
    assert late.run().status == "completed"


def test_deadline_compensates_with_reason_deadline() -> None:
    slow = {("confirm", "action", n): Reply(503, retry_after=100.0) for n in range(1, 4)}
    sim = Simulation(saga(WITH_PIVOT, timeout="30s"), replies(slow))
    state = sim.run()
    assert state.status == "compensated" and state.reason == "deadline"
    assert any(isinstance(e, ev.DeadlinePassed) for e in sim.journal)


def test_compensation_retries_run_out_then_resume_finishes() -> None:
    failing_undo = {("c", "compensation", n): Reply(503) for n in range(1, 11)}
    failing_undo[("d", "action", 1)] = business(None)  # type: ignore[arg-type]
    sim = Simulation(saga(DIAMOND), replies(failing_undo), input={"order": "1"})
    state = sim.run()
    assert state.status == "failed"
    # c could not be undone, so its dependencies a and b were left alone (order holds)
    assert state.steps["c"].status == "compensation_failed"
    assert state.steps["a"].status == "succeeded" and state.steps["b"].status == "succeeded"
    assert state.not_compensated == ["a", "b", "c"]
    sim.resume()
    state = sim.run()
    assert state.status == "compensated"
    assert [state.steps[n].status for n in "abc"] == ["compensated"] * 3


def test_independent_branch_still_compensates_when_another_branch_is_stuck() -> None:
    text = """
steps:
  - {name: a, action: {service: s, path: /a}, compensation: {service: s, path: /a/undo}}
  - {name: b, depends_on: [], action: {service: s, path: /b},
     compensation: {service: s, path: /b/undo}}
  - {name: c, depends_on: [a, b], action: {service: s, path: /c}}
"""
    table = {("a", "compensation", n): Reply(400) for n in range(1, 3)}
    table[("c", "action", 1)] = Reply(409)
    state = Simulation(saga(text), replies(table)).run()
    assert state.status == "failed"
    assert state.steps["b"].status == "compensated"
    assert state.steps["a"].status == "compensation_failed"
    assert state.not_compensated == ["a"]


def test_crash_mid_attempt_retries_with_same_key() -> None:
    sim = Simulation(saga(DIAMOND), replies({}), input={"order": "1"})
    sim.decide_round()
    sim.crash()
    assert [e.type for e in sim.journal[-2:]] == ["step_attempt_failed"] * 2
    state = sim.run()
    assert state.status == "completed"
    keys = [i.request.idempotency_key for i in sim.sent if i.step == "a"]
    assert keys == ["exec-1:a:action"] * 2


def test_decide_is_idempotent_on_the_same_state() -> None:
    sim = Simulation(saga(DIAMOND), replies({}), input={"order": "1"})
    assert decide(sim.definition, sim.state, sim.now) == decide(sim.definition, sim.state, sim.now)


def test_jitter_is_deterministic_and_uniformish() -> None:
    draws = [jitter_draw("e", "s", "action", n) for n in range(2000)]
    assert draws == [jitter_draw("e", "s", "action", n) for n in range(2000)]
    assert 0.45 < sum(draws) / len(draws) < 0.55
    assert all(0 <= d < 1 for d in draws)
