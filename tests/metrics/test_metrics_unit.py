"""Metrics without Ray: HostMetrics fed by a simulated run, histograms, the circuit-state
mapping (on a snapshot shaped as ``HttpInvoker.traffic_snapshot()`` returns it), and the
exposition the API builds from host snapshots."""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

from prometheus_client.parser import text_string_to_metric_families

from coordinator.core import events as ev
from coordinator.core.outcomes import Reply
from coordinator.core.replay import apply
from coordinator.core.simulate import Simulation, ok
from coordinator.core.state import ExecutionState
from coordinator.executions import ExecutionService
from coordinator.metrics.api import ApiMetrics, circuit_family, circuit_states
from coordinator.metrics.histogram import Histogram, cumulative
from coordinator.metrics.host import HostMetrics
from coordinator.pool import HostPool
from tests.core.conftest import saga
from tests.core.test_decide import DIAMOND

TRAFFIC_A = {"instances": [
    {"service": "flights", "url": "http://a:9101", "state": "closed", "outstanding": 0},
    {"service": "flights", "url": "http://b:9101", "state": "half_open"},
    {"service": "hotels", "url": "http://c:9102", "state": "open"},
    {"service": "hotels", "url": "http://d:9102", "state": "weird"},
], "services": {}}
TRAFFIC_B = {"instances": [
    {"service": "flights", "url": "http://a:9101", "state": "open"},
    {"service": "flights", "url": "http://b:9101", "state": "closed"},
]}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_circuit_states_map_closed_half_open_open_and_the_worst_host_wins() -> None:
    assert circuit_states([TRAFFIC_A, None, TRAFFIC_B]) == {
        ("flights", "http://a:9101"): 2, ("flights", "http://b:9101"): 1,
        ("hotels", "http://c:9102"): 2}
    family = circuit_family([TRAFFIC_A])
    values = {tuple(s.labels.values()): s.value for s in family.samples}
    assert values == {("flights", "http://a:9101"): 0, ("flights", "http://b:9101"): 1,
                      ("hotels", "http://c:9102"): 2}


def test_an_instance_label_leaves_the_url_path_out() -> None:
    traffic = {"instances": [
        {"service": "flights", "url": "http://a:9101/tenant-s3cret/api", "state": "open"}]}
    assert circuit_states([traffic]) == {("flights", "http://a:9101"): 2}


def test_histogram_buckets_are_cumulative_with_le_inclusive() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        histogram.observe(value)
    assert cumulative(histogram.snapshot()) == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.snapshot()["sum"] == 7.65


def run_fed(respond: Any, cancel_after: int | None = None) -> tuple[HostMetrics, Simulation]:
    """A simulated run whose every event reaches ``on_journaled`` once, in order."""
    metrics = HostMetrics()
    sim = Simulation(saga(DIAMOND), respond, input={"order": "1"})
    fed = ExecutionState()

    def feed() -> None:
        while len(seen) < len(sim.journal):
            event = sim.journal[len(seen)]
            seen.append(event)
            apply(sim.definition, fed, event)
            metrics.on_journaled(fed, [event])

    seen: list[ev.Event] = []
    rounds = 0
    while not sim.state.terminal:
        if not sim.decide_round():
            if sim.inflight:
                sim.deliver()
            elif sim.wake is not None:
                sim.now = sim.wake
        rounds += 1
        sim.now += 0.5
        if cancel_after is not None and rounds == cancel_after:
            sim.cancel()
        feed()
    return metrics, sim


def test_host_metrics_count_a_compensated_run() -> None:
    def respond(invoke: Any) -> Reply:
        if invoke.step == "d" and invoke.phase == "action":
            return Reply(status_code=422) if invoke.attempt > 1 else Reply(status_code=503)
        return ok({"id": invoke.step})

    metrics, sim = run_fed(respond)
    assert sim.state.status == "compensated"
    counters = metrics.snapshot()["sagas"]["test_saga"]
    assert counters["ended"] == {"completed": 0, "compensated": 1, "failed": 0}
    assert counters["attempts"] == {"succeeded": 3, "retryable": 1, "business_failure": 1,
                                    "unknown": 0}
    assert counters["compensation_attempts"]["succeeded"] == 3
    assert counters["rollbacks"] == {"step_failed": 1, "cancelled": 0, "deadline": 0,
                                     "history_limit": 0}
    assert counters["retries"] == {"action": 1, "compensation": 0}
    assert counters["step_seconds"]["count"] == 3
    assert counters["saga_seconds"]["compensated"]["count"] == 1
    assert counters["saga_seconds"]["compensated"]["sum"] > 0


def test_host_metrics_count_a_cancel_as_a_rollback() -> None:
    metrics, sim = run_fed(lambda _: ok({"id": "x"}), cancel_after=1)
    assert sim.state.reason == "cancelled"
    counters = metrics.snapshot()["sagas"]["test_saga"]
    assert counters["rollbacks"]["cancelled"] == 1 and counters["ended"]["compensated"] == 1


class PoolWithSnapshots:
    def __init__(self, snapshots: dict[str, dict[str, Any] | None]) -> None:
        self.snapshots = snapshots
        self.names = list(snapshots)
        self.calls = Counter({("start_many", "link"): 7, ("finished_since", "ray"): 2})

    async def host_metrics(self, timeout: float) -> dict[str, dict[str, Any] | None]:
        return self.snapshots


class ServiceStandIn:
    started = {"test_saga": 2}
    admission = None


async def test_the_exposition_aggregates_host_snapshots() -> None:
    metrics, _ = run_fed(lambda _: ok({"id": "x"}))
    metrics.journal_committed(3)
    metrics.journal_appended(0.002)
    snapshot = {**metrics.snapshot(), "host": "h-0", "running": 4, "traffic": TRAFFIC_A}
    pool = PoolWithSnapshots({"h-0": snapshot, "h-1": None})
    api = ApiMetrics(cast(ExecutionService, ServiceStandIn()), cast(HostPool, pool))
    found = samples((await api.render()).decode())
    assert found[("sagaray_executions_started_total", (("saga", "test_saga"),))] == 2
    assert found[("sagaray_hosts", ())] == 2
    assert found[("sagaray_host_up", (("host", "h-0"),))] == 1
    assert found[("sagaray_host_up", (("host", "h-1"),))] == 0
    assert found[("sagaray_host_executions_running", (("host", "h-0"),))] == 4
    ended = (("host", "h-0"), ("saga", "test_saga"), ("status", "completed"))
    assert found[("sagaray_executions_ended_total", ended)] == 1
    succeeded = (("host", "h-0"), ("outcome", "succeeded"), ("saga", "test_saga"))
    assert found[("sagaray_step_attempts_total", succeeded)] == 4
    assert found[("sagaray_journal_batch_size_count", (("host", "h-0"),))] == 1
    assert found[("sagaray_journal_append_seconds_bucket",
                  (("host", "h-0"), ("le", "0.0025")))] == 1
    circuit = (("instance", "http://c:9102"), ("service", "hotels"))
    assert found[("sagaray_circuit_state", circuit)] == 2
    assert found[("sagaray_host_calls_total", (("call", "start_many"), ("via", "link")))] == 7
    assert found[("sagaray_host_calls_total", (("call", "finished_since"), ("via", "ray")))] == 2
    # A second app in the same process has its own registry: nothing collides.
    other = ApiMetrics(cast(ExecutionService, ServiceStandIn()), cast(HostPool, pool))
    assert other.registry is not api.registry
    assert samples((await other.render()).decode()) == found
