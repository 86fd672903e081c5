"""CPU cost of routing one attempt through ``ServiceTraffic`` (no network).

    .venv/bin/python -m bench.traffic_overhead [-n 200000]

Sends ``n`` attempts whose "request" is a coroutine that returns a 200 at once, so
what is timed is the routing itself: the plain path of a single-url service, three
instances (least outstanding, random ties, outlier bookkeeping), and three instances
behind a bulkhead. The baseline awaits the same coroutine directly. Figures are
microseconds per attempt, best of 5 runs (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from coordinator.core.outcomes import Reply
from coordinator.traffic import ServiceTraffic, TrafficPolicy

OK = Reply(status_code=200)


async def _reply(url: str) -> Reply:
    return OK


async def _time(n: int, call: Callable[[], Awaitable[Reply]]) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            await call()
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


async def main(n: int) -> None:
    rng = random.Random(1)
    one = ServiceTraffic("s", ("http://a",), TrafficPolicy(), rng, time.monotonic)
    three = ServiceTraffic("s", ("http://a", "http://b", "http://c"), TrafficPolicy(), rng,
                           time.monotonic)
    bulk = ServiceTraffic("s", ("http://a", "http://b", "http://c"),
                          TrafficPolicy(max_concurrency=100), rng, time.monotonic)
    cases: dict[str, Callable[[], Awaitable[Reply]]] = {
        "baseline (no routing)": lambda: _reply("http://a"),
        "single url (plain path)": lambda: one.send("k", _reply),
        "3 instances": lambda: three.send("k", _reply),
        "3 instances + bulkhead": lambda: bulk.send("k", _reply),
    }
    for name, call in cases.items():
        print(f"{name:<26} {await _time(n, call):6.2f} us/attempt")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().n))
