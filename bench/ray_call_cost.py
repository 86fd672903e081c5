"""The CPU price of one Ray actor call, alone: a no-op async actor method at 100 in flight,
and of the same call over a host link (``coordinator/host_link.py``) to a Ray actor.

    .venv/bin/python -m bench.ray_call_cost

Prints calls/s and CPU ms per call in the caller and in the actor's process (from
/proc), without and with one pydantic event as argument (as ``HostPool.dispatch``
passes); then the round trip of one call at a time from an asyncio caller (p50,
p99), the latency a hand-over and a finish-feed answer each add to a saga. The
link's lines send the same event as the hand-over encodes it (``encode_batch``).
Context for docs/performance.md: a waited start makes two such calls.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import ray

from bench.proc_stats import CpuSnapshot, cpu_delta, loadavg
from coordinator.core.events import ExecutionStarted
from coordinator.host_link import LinkClient, LinkServer
from coordinator.link_codec import encode_batch


@ray.remote(num_cpus=0, max_concurrency=10_000)
class Echo:
    async def noop(self, execution_id: str, events: object = None) -> dict[str, str]:
        return {"host": "h", "status": "running"}


@ray.remote(num_cpus=0, max_concurrency=10_000)
class LinkEcho:
    """A no-op handler behind a host link, in an actor's process as a SagaHost's is."""

    def __init__(self) -> None:
        async def noop(body: bytes) -> bytes:
            return b'[{"host":"h","status":"running"}]'

        self.link = LinkServer({"noop": noop})

    async def listen(self) -> tuple[str, str]:
        return await self.link.start("127.0.0.1"), self.link.key


async def measure_link(calls: int = 3000, in_flight: int = 100) -> None:
    actor = LinkEcho.remote()  # type: ignore[attr-defined]  # held: its last handle ends it
    address, key = await actor.listen.remote()
    client = LinkClient(address, key)
    event = [ExecutionStarted(at=time.time(), execution_id="e" * 32, saga="s", version=1,
                              input={"order_id": "x"})]
    for label, batch in (("no argument", []), ("one pydantic event", [("id", event, 1, None)])):
        body = encode_batch(batch)  # type: ignore[arg-type]
        await rate(f"link, {label}", lambda body=body: client.call("noop", body),
                   calls, in_flight)
    await round_trip("link, one call at a time", lambda: client.call("noop", b"[]"))
    client.close()


async def measure(calls: int = 3000, in_flight: int = 100) -> None:
    actor = Echo.remote()  # type: ignore[attr-defined]
    event = [ExecutionStarted(at=time.time(), execution_id="e" * 32, saga="s", version=1,
                              input={"order_id": "x"})]
    for label, arg in (("no argument", None), ("one pydantic event", event)):
        await rate(label, lambda arg=arg: actor.noop.remote("id", arg), calls, in_flight)


async def rate(label: str, call: Callable[[], Awaitable[object]], calls: int,
               in_flight: int) -> None:
    """Calls/s and CPU per call at ``in_flight`` concurrent calls, after a warm-up."""
    for _ in range(2):
        await asyncio.gather(*(call() for _ in range(200)))
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            await call()

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


async def round_trip(label: str, call: Callable[[], Awaitable[object]],
                     calls: int = 500) -> None:
    await asyncio.gather(*(call() for _ in range(200)))
    took = []
    for _ in range(calls):
        began = time.perf_counter()
        await call()
        took.append((time.perf_counter() - began) * 1000)
    took.sort()
    print(f"{label}: round trip p50 {took[len(took) // 2]:.2f} ms, "
          f"p99 {took[int(len(took) * 0.99)]:.2f} ms over {calls}; load {loadavg()[0]:.2f}")


async def round_trips() -> None:
    actor = Echo.remote()  # type: ignore[attr-defined]
    await round_trip("one call at a time", lambda: actor.noop.remote("id"))


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", object_store_memory=128 * 1024 * 1024)
    try:
        asyncio.run(measure())
        asyncio.run(round_trips())
        asyncio.run(measure_link())
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
