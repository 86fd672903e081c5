"""The opening round: what the API journals with a start, and what the host finds again."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core import events as ev
from coordinator.core.commands import Invoke, WaitUntil
from coordinator.core.decide import decide
from coordinator.core.definition import SagaDefinition
from coordinator.core.opening import handed_attempts, opening_round
from coordinator.core.replay import replay
from tests.core.conftest import saga
from tests.core.test_properties import definitions

PARALLEL = """
steps:
  - {name: a, action: {service: s, path: "/a/${input.order}"}}
  - {name: b, depends_on: [], action: {service: s, path: /b}}
  - {name: c, depends_on: [a, b], action: {service: s, path: /c}}
"""
NOW = 1_000.0


def started(definition: SagaDefinition, value: Any = None) -> ev.ExecutionStarted:
    return ev.ExecutionStarted(at=NOW, execution_id="e1", saga=definition.name,
                               version=definition.version, input=value or {"order": 7})


def test_the_round_is_the_assignment_and_every_root_steps_first_attempt() -> None:
    definition = saga(PARALLEL)
    start = started(definition)
    opening = opening_round(definition, start, NOW, "host-0", "node-1")
    assert opening == [
        ev.HostAssigned(at=NOW, host="host-0", node_id="node-1"),
        ev.StepAttemptStarted(at=NOW, step="a", attempt=1),
        ev.StepAttemptStarted(at=NOW, step="b", attempt=1),
    ]
    found = handed_attempts(definition, [start, *opening])
    assert found is not None
    assigned, invokes = found
    assert assigned == opening[0]
    assert [(i.step, i.attempt, i.request.path) for i in invokes] == [("a", 1, "/a/7"),
                                                                      ("b", 1, "/b")]
    state = replay(definition, [start, *opening])
    assert decide(definition, state, NOW) == []  # in flight: nothing to send twice


def test_no_round_when_the_first_decisions_are_not_only_attempts() -> None:
    skipped = saga("""
steps:
  - {name: a, when: "input.flag", action: {service: s, path: /a}}
  - {name: b, action: {service: s, path: /b}}
""")
    assert opening_round(skipped, started(skipped, {"flag": False}), NOW, "h", "n") == []
    taken = opening_round(skipped, started(skipped, {"flag": True}), NOW, "h", "n")
    assert [e.type for e in taken] == ["host_assigned", "step_attempt_started"]


def test_events_that_are_not_exactly_a_round_are_refused() -> None:
    definition = saga(PARALLEL)
    start = started(definition)
    assigned, first, second = opening_round(definition, start, NOW, "h", "n")
    later = ev.StepAttemptStarted(at=NOW + 1, step="b", attempt=1)
    for events in ([start, assigned],  # nothing to send
                   [start, assigned, first],  # part of the round
                   [start, assigned, second, first],  # another order
                   [start, assigned, first, later],  # another time
                   [start, first, second],  # no assignment
                   [start, assigned, first, second, ev.StepAttemptSucceeded(
                       at=NOW, step="a", attempt=1)]):  # more than the round
        assert handed_attempts(definition, events) is None, events


@settings(max_examples=300, deadline=None)
@given(definition=definitions(), flag=st.booleans())
def test_the_host_finds_the_very_round_the_api_journaled(definition: SagaDefinition,
                                                        flag: bool) -> None:
    start = ev.ExecutionStarted(at=NOW, execution_id="e1", saga=definition.name,
                                version=definition.version, input={"flag": flag})
    opening = opening_round(definition, start, NOW, "h", "n")
    state = replay(definition, [start, ev.HostAssigned(at=NOW, host="h", node_id="n")])
    round_ = decide(definition, state, NOW)
    invokes = [c for c in round_ if isinstance(c, Invoke)]
    decisions = [c for c in round_ if not isinstance(c, Invoke | WaitUntil)]
    if decisions or not invokes:
        assert opening == []
        return
    assert [i.started(NOW) for i in invokes] == opening[1:]
    found = handed_attempts(definition, [start, *opening])
    assert found is not None and found[1] == invokes
