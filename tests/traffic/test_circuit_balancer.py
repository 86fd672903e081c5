"""Pure unit tests of the circuit state machine and the balancer (fake clock, seeded rng)."""

from __future__ import annotations

import random
from collections import Counter

from coordinator.traffic.balancer import Instance, pick
from coordinator.traffic.circuit import Circuit
from coordinator.traffic.policy import OutlierPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = OutlierPolicy(consecutive_failures=3, ejection=2.0, max_ejection=5.0)


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    clock = FakeClock()
    circuit = Circuit(POLICY, clock)
    circuit.failed()
    circuit.failed()
    circuit.succeeded()
    assert (circuit.state, circuit.consecutive_failures) == ("closed", 0)
    for _ in range(3):
        assert circuit.admits()
        circuit.failed()
    assert circuit.state == "open" and circuit.ejections == 1
    assert not circuit.admits()
    assert circuit.seconds_until_trial() == 2.0


def test_half_open_admits_one_trial_whose_verdict_closes_or_reopens_longer() -> None:
    clock = FakeClock()
    circuit = Circuit(POLICY, clock)
    for _ in range(3):
        circuit.failed()
    clock.now += 2.0
    assert circuit.admits()
    circuit.acquire()
    assert circuit.state == "half_open"
    assert not circuit.admits()  # the trial is in flight: nobody else
    circuit.failed()
    assert circuit.state == "open" and circuit.ejections == 2
    assert circuit.seconds_until_trial() == 4.0  # doubled
    clock.now += 4.0
    circuit.acquire()
    circuit.failed()
    assert circuit.seconds_until_trial() == 5.0  # capped at max_ejection
    clock.now += 5.0
    circuit.acquire()
    circuit.succeeded()
    assert (circuit.state, circuit.level, circuit.ejections) == ("closed", 0, 3)
    for _ in range(3):
        circuit.failed()
    assert circuit.seconds_until_trial() == 2.0  # the doubling starts over


def test_a_neutral_reply_ends_the_trial_without_a_verdict() -> None:
    clock = FakeClock()
    circuit = Circuit(POLICY, clock)
    for _ in range(3):
        circuit.failed()
    clock.now += 2.0
    circuit.acquire()
    circuit.released()
    assert circuit.state == "half_open" and circuit.admits()


def test_health_checks_take_out_and_bring_back() -> None:
    clock = FakeClock()
    circuit = Circuit(POLICY, clock)
    circuit.health_checked(False)
    assert not circuit.admits() and circuit.reported_state == "open"
    assert circuit.seconds_until_trial() is None
    circuit.health_checked(True)
    assert circuit.admits() and circuit.reported_state == "closed"
    for _ in range(3):
        circuit.failed()
    circuit.health_checked(True)  # a passing check ends the ejection early: trial now
    assert circuit.admits() and circuit.state == "open"
    circuit.acquire()
    assert circuit.state == "half_open"


def test_without_a_policy_failures_are_counted_but_never_eject() -> None:
    circuit = Circuit(None, FakeClock())
    for _ in range(100):
        circuit.failed()
    assert circuit.state == "closed" and circuit.admits() and circuit.consecutive_failures == 100


def instances(count: int, clock: FakeClock) -> list[Instance]:
    return [Instance(f"http://i{n}", Circuit(POLICY, clock)) for n in range(count)]


def test_least_outstanding_wins_and_ties_are_random_with_a_seed() -> None:
    clock = FakeClock()
    pool = instances(3, clock)
    pool[0].outstanding, pool[1].outstanding, pool[2].outstanding = 2, 1, 1
    rng = random.Random(7)
    picks = Counter(chosen.url for _ in range(400) if (chosen := pick(pool, rng)) is not None)
    assert set(picks) == {"http://i1", "http://i2"}
    assert min(picks.values()) > 150  # both tied instances get a fair share
    one, two = random.Random(3), random.Random(3)
    assert [pick(pool, one) for _ in range(20)] == [pick(pool, two) for _ in range(20)]


def test_ejected_instances_are_skipped_and_the_previous_one_avoided() -> None:
    clock = FakeClock()
    pool = instances(3, clock)
    for _ in range(3):
        pool[0].circuit.failed()
    rng = random.Random(1)
    assert all(pick(pool, rng) is not pool[0] for _ in range(50))
    assert all(pick(pool, rng, avoid=pool[1]) is pool[2] for _ in range(50))
    pool[2].outstanding = 10  # avoiding wins over load: a retry goes elsewhere
    assert pick(pool, rng, avoid=pool[1]) is pool[2]


def test_the_previous_instance_is_used_when_it_is_the_only_one_left() -> None:
    clock = FakeClock()
    pool = instances(2, clock)
    for _ in range(3):
        pool[0].circuit.failed()
    assert pick(pool, random.Random(1), avoid=pool[1]) is pool[1]
    for _ in range(3):
        pool[1].circuit.failed()
    assert pick(pool, random.Random(1)) is None
