"""Cost of the metrics hook on the runner's hot path, in-process.

    python -m bench.metrics_hook

Runs a three-step saga to completion in the core simulator, then times
``HostMetrics.on_journaled`` over its whole history (every event type a clean run
journals, a step latency and a saga latency observed): nanoseconds per event.
"""

from __future__ import annotations

import timeit

from coordinator.core.definition import SagaDefinition
from coordinator.core.simulate import Simulation, ok
from coordinator.metrics.host import HostMetrics


def main(calls: int = 200_000) -> None:
    steps = [{"name": f"s{i}", "action": {"service": "s", "path": "/a"}} for i in range(3)]
    definition = SagaDefinition.model_validate({"name": "x", "version": 1, "steps": steps})
    sim = Simulation(definition, lambda _: ok())
    sim.run()
    metrics, events, state = HostMetrics(), sim.journal, sim.state
    seconds = timeit.timeit(lambda: metrics.on_journaled(state, events), number=calls)
    per_call = seconds / calls
    print(f"{len(events)} events per call: {per_call / len(events) * 1e9:.0f} ns per event, "
          f"{per_call * 1e6:.2f} us per saga history")


if __name__ == "__main__":
    main()
