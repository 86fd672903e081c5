"""The CPU price of one Ray actor call, alone: a no-op async actor method at 100 in flight.

    .venv/bin/python -m bench.ray_call_cost

Prints calls/s and CPU ms per call in the caller and in the actor's process (from
/proc), without and with one pydantic event as argument (as ``HostPool.dispatch``
passes); then the round trip of one call at a time from an asyncio caller (p50,
p99), the latency a hand-over and a finish-feed answer each add to a saga.
Context for docs/performance.md: a waited start makes two such calls.
"""

from __future__ import annotations

import asyncio
import os
import time

import ray

from bench.proc_stats import CpuSnapshot, cpu_delta, loadavg
from coordinator.core.events import ExecutionStarted


@ray.remote(num_cpus=0, max_concurrency=10_000)
class Echo:
    async def noop(self, execution_id: str, events: object = None) -> dict[str, str]:
        return {"host": "h", "status": "running"}


async def measure(calls: int = 3000, in_flight: int = 100) -> None:
    actor = Echo.remote()  # type: ignore[attr-defined]
    event = [ExecutionStarted(at=time.time(), execution_id="e" * 32, saga="s", version=1,
                              input={"order_id": "x"})]
    for label, arg in (("no argument", None), ("one pydantic event", event)):
        for _ in range(2):  # warm up
            await asyncio.gather(*(actor.noop.remote("id", arg) for _ in range(200)))
        gate = asyncio.Semaphore(in_flight)

        async def one(arg: object = arg, gate: asyncio.Semaphore = gate) -> None:
            async with gate:
                await actor.noop.remote("id", arg)

        before, load_before = CpuSnapshot.take(os.getpid()), loadavg()[0]
        began = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(calls)))
        elapsed = time.perf_counter() - began
        used = cpu_delta(before, CpuSnapshot.take(os.getpid()))
        # The actor's worker is "ray::Echo": classified as ray_system (with Ray's daemons).
        print(f"{label}: {calls / elapsed:.0f} calls/s; CPU ms per call: caller "
              f"{used['api'] * 1000 / calls:.3f}, actor + Ray daemons "
              f"{used.get('ray_system', 0.0) * 1000 / calls:.3f}; "
              f"load {load_before:.2f}-{loadavg()[0]:.2f}")


async def round_trips(calls: int = 500) -> None:
    actor = Echo.remote()  # type: ignore[attr-defined]
    await asyncio.gather(*(actor.noop.remote("id") for _ in range(200)))
    took = []
    for _ in range(calls):
        began = time.perf_counter()
        await actor.noop.remote("id")
        took.append((time.perf_counter() - began) * 1000)
    took.sort()
    print(f"one call at a time: round trip p50 {took[len(took) // 2]:.2f} ms, "
          f"p99 {took[int(len(took) * 0.99)]:.2f} ms over {calls}; load {loadavg()[0]:.2f}")


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", object_store_memory=128 * 1024 * 1024)
    try:
        asyncio.run(measure())
        asyncio.run(round_trips())
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
