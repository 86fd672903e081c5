"""Property-based tests of the core: random DAGs, outcomes, timeouts, cancels, crashes.

A hypothesis state machine drives ``Simulation`` with arbitrary interleavings and
checks, after every move, that replaying the journal rebuilds the live state and
that the saga invariants hold over the whole history.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from coordinator.core import events as ev
from coordinator.core.decide import decide
from coordinator.core.definition import SagaDefinition
from coordinator.core.outcomes import Reply
from coordinator.core.replay import replay
from coordinator.core.simulate import Simulation, ok

REPLIES = st.sampled_from([
    ok({"id": "r"}),
    ok({"id": "r"}),
    Reply(status_code=503),
    Reply(status_code=422, body={"detail": "no"}),
    Reply(status_code=404),
    Reply(failure="timeout"),
    Reply(failure="connection_lost"),
    Reply(failure="connection_refused"),
])


@st.composite
def definitions(draw: Any) -> SagaDefinition:
    count = draw(st.integers(1, 6))
    pivot = draw(st.none() | st.integers(0, count - 1))
    steps: list[dict[str, Any]] = []
    for index in range(count):
        name = f"s{index}"
        earlier = [f"s{i}" for i in range(index)]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        if pivot is not None and index == pivot:
            deps = earlier
        elif pivot is not None and index > pivot:
            deps = sorted({*deps, f"s{pivot}"})
        step: dict[str, Any] = {
            "name": name, "depends_on": deps,
            "retry": {"max_attempts": draw(st.integers(1, 3))},
            "compensation_retry": {"max_attempts": draw(st.integers(1, 3))},
            "action": {"service": "svc", "path": f"/{name}"},
        }
        if pivot is not None and index == pivot:
            step["pivot"] = True
        if ((pivot is None or index < pivot) and draw(st.booleans())) or index == 0:
            own = draw(st.booleans())
            path = f"/{name}/${{steps.{name}.output.id}}" if own else f"/{name}/undo"
            if pivot is None or index < pivot:
                step["compensation"] = {"service": "svc", "path": path}
        if draw(st.integers(0, 5)) == 0:
            step["when"] = "input.flag"
        steps.append(step)
    timeout = draw(st.sampled_from([None, "5s", "60s"]))
    raw: dict[str, Any] = {"name": "prop", "version": 1, "steps": steps, "timeout": timeout}
    if draw(st.booleans()):
        # Tight history limits, so that runs meet them: a clean run needs 3 + 2 per step.
        raw["limits"] = {"max_events": draw(st.integers(3 + 2 * count, 3 + 2 * count + 25)),
                         "max_attempts": draw(st.integers(count, count + 5))}
    return SagaDefinition.model_validate(raw)


class SagaMachine(RuleBasedStateMachine):
    sim: Simulation

    @initialize(definition=definitions(), flag=st.booleans())
    def start(self, definition: SagaDefinition, flag: bool) -> None:
        self.sim = Simulation(definition, lambda _: ok(), input={"flag": flag})
        self.external = 0  # events journaled from outside decide: cancels, resumes, crashes

    @rule()
    def decide_round(self) -> None:
        self.sim.decide_round()

    @precondition(lambda self: bool(self.sim.inflight))
    @rule(data=st.data(), reply=REPLIES)
    def deliver(self, data: Any, reply: Reply) -> None:
        index = data.draw(st.integers(0, len(self.sim.inflight) - 1))
        self.sim.deliver(index, reply)

    @rule(seconds=st.sampled_from([0.05, 1.0, 30.0, 120.0]))
    def advance(self, seconds: float) -> None:
        self.sim.now += seconds

    @rule()
    def cancel(self) -> None:
        if not self.sim.state.terminal:
            self.sim.cancel()
            self.external += 1

    @rule()
    def crash(self) -> None:
        before = len(self.sim.journal)
        self.sim.crash()
        self.external += len(self.sim.journal) - before

    @precondition(lambda self: self.sim.state.status == "failed")
    @rule()
    def resume(self) -> None:
        self.sim.resume()
        self.external += 1

    @invariant()
    def history_stays_within_its_limits(self) -> None:
        check_limits(self.sim, self.external)

    @invariant()
    def replay_equals_live_state(self) -> None:
        assert replay(self.sim.definition, self.sim.journal) == self.sim.state

    @invariant()
    def history_respects_the_saga_rules(self) -> None:
        check_history(self.sim.definition, self.sim.journal)

    @invariant()
    def terminal_means_idle(self) -> None:
        if self.sim.state.terminal:
            assert decide(self.sim.definition, self.sim.state, self.sim.now) == []
            assert not self.sim.state.inflight()

    def teardown(self) -> None:
        if not hasattr(self, "sim"):
            return
        sim = self.sim
        sim.respond = lambda _: ok({"id": "r"})
        state = sim.run()
        assert state.terminal
        check_history(sim.definition, sim.journal)
        check_terminal(sim)
        check_limits(sim, self.external)


def check_limits(sim: Simulation, external: int) -> None:
    """The core never sends past limits.max_attempts, and the history it writes stays
    within max_events, the compensation reserve, and one reply per step still in flight."""
    d, state = sim.definition, sim.state
    assert state.action_attempts <= d.limits.max_attempts
    bound = d.limits.max_events + d.rollback_reserve + len(d.steps) + 2
    assert len(sim.journal) - external <= bound, (len(sim.journal), external, bound)
    if state.reason == "history_limit" and state.terminal:
        assert state.status == "failed", state


def check_history(definition: SagaDefinition, journal: list[ev.Event]) -> None:
    graph = definition.graph
    done: set[str] = set()
    unknown: set[str] = set()
    undo_started: set[str] = set()
    terminal = False
    for event in journal:
        if terminal:
            assert isinstance(event, ev.ResumeRequested), f"{event.type} after a terminal event"
            terminal = False
        if isinstance(event, ev.StepAttemptStarted):
            if not event.recovering:
                assert graph.dependencies[event.step] <= done, f"{event.step} before its deps"
            assert not undo_started & ({event.step} | graph.descendants[event.step]) \
                or event.recovering, f"{event.step} runs after its undo began"
        elif isinstance(event, ev.StepAttemptSucceeded | ev.StepSkipped):
            done.add(event.step)
            unknown.discard(event.step)
        elif isinstance(event, ev.StepAttemptFailed):
            (unknown.add if event.outcome == "unknown" else unknown.discard)(event.step)
        elif isinstance(event, ev.CompensationStarted):
            assert event.step in done or event.step in unknown, f"undo of {event.step} never ran"
            undo_started.add(event.step)
        terminal = terminal or event.type in ev.TERMINAL_EVENT_TYPES
    check_reverse_order(definition, journal)


def check_reverse_order(definition: SagaDefinition, journal: list[ev.Event]) -> None:
    """A step's undo starts only after every descendant's undo has ended."""
    ended: set[str] = set()
    for event in journal:
        if isinstance(event, ev.CompensationSucceeded):
            ended.add(event.step)
        if isinstance(event, ev.CompensationStarted):
            for later in definition.graph.descendants[event.step]:
                started_later = any(isinstance(e, ev.CompensationStarted) and e.step == later
                                    for e in journal)
                if started_later:
                    assert later in ended, f"undo of {event.step} before {later} was undone"


def check_terminal(sim: Simulation) -> None:
    state = sim.state
    statuses = {name: step.status for name, step in state.steps.items()}
    if state.status == "completed":
        assert set(statuses.values()) <= {"succeeded", "skipped"}
    # A finished rollback leaves no step running (one waiting to retry is given up),
    # unless it was cut short by the history cap of a resumed rollback.
    if state.rolled_back and "compensation reserve" not in (state.error or ""):
        assert "running" not in statuses.values(), statuses
    if state.status == "compensated":
        for step in sim.definition.steps:
            if step.compensation is not None:
                assert statuses[step.name] != "succeeded", statuses
                assert statuses[step.name] != "compensation_failed"


SagaMachine.TestCase.settings = settings(
    max_examples=2000, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSagaMachine = SagaMachine.TestCase


def test_replay_at_every_prefix_matches_the_live_state() -> None:
    from tests.core.conftest import saga
    from tests.core.test_decide import DIAMOND

    table = {1: Reply(503), 3: Reply(failure="timeout")}
    counter = iter(range(1, 1000))
    sim = Simulation(saga(DIAMOND), lambda _: table.get(next(counter), ok({"id": "x"})),
                     input={"order": "1"})
    snapshots = []
    while not sim.state.terminal:
        snapshots.append((len(sim.journal), replay(sim.definition, sim.journal)))
        if not sim.decide_round():
            if sim.inflight:
                sim.deliver()
            elif sim.wake is not None:
                sim.now = sim.wake
    for length, snapshot in snapshots:
        assert replay(sim.definition, sim.journal[:length]) == snapshot
