"""Sagas on real Ray against multi-instance demo services on loopback.

Each test prints its figure (run with ``-s`` to see them): sagas that failed when an
instance died, the share of traffic a slow instance got, the fast service's latency
while another service's bulkhead is saturated.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from typing import Any

import pytest

from services.runner import add_fault, clear_faults
from tests.traffic.conftest import TrafficFactory, TrafficStack

pytestmark = pytest.mark.ray


def statuses(results: list[dict[str, Any]]) -> Counter[str]:
    return Counter(str(r["status"]) for r in results)


async def test_killing_an_instance_mid_load_fails_no_saga(traffic_stack: TrafficFactory) -> None:
    stack = await traffic_stack(
        {"inventory": 3, "shipping": 1, "orders": 1},
        {"inventory": {"outlier": {"consecutive_failures": 3, "ejection": "5s"}}}, hosts=2)
    inventory = stack.instances["inventory"]
    for url in inventory.urls:  # a few requests in flight on each instance at any time
        await add_fault(stack.api.session, url, {"path": "/reservations", "fault": "latency=150"})

    async def kill_later() -> None:
        await asyncio.sleep(1.0)
        await inventory.stop(1, abort=True)

    results, _ = await asyncio.gather(stack.run_all("traffic_order", 60, spread=0.04),
                                      kill_later())
    seen = statuses(results)
    retried = sum(1 for r in results for s in r["steps"]
                  if s["name"] == "reserve" and s["attempts"] > 1)
    snapshots = await stack.host_traffic()
    dead = [i for snap in snapshots.values() for i in snap["instances"]
            if i["url"] == inventory.urls[1]]
    lost = len([e for r in results for e in await stack.events(r["execution_id"])
                if e["type"] == "step_attempt_failed" and "connection lost" in e["error"]])
    print(f"\ncrash one of 3 inventory instances (150 ms replies) after 1 s of 60 sagas "
          f"over 2.4 s: {lost} attempts lost in flight, "
          f"statuses {dict(seen)}, {retried} reserve steps retried elsewhere, requests per "
          f"instance {inventory.requests()}, dead instance per host "
          f"{[(i['state'], i['ejections']) for i in dead]}")
    assert seen == Counter({"completed": 60})
    keys = [e["idempotency_key"] for e in inventory.store.ledger.entries if e["kind"] == "forward"]
    assert len(keys) == len(set(keys)) == 60  # a lost attempt's retry acted once, elsewhere
    # Each host that met the dead instance 3 times in a row took it out of rotation.
    assert any(i["ejections"] >= 1 for i in dead)
    assert all(i["state"] == "open" for i in dead if i["ejections"])


async def test_a_slow_instance_receives_clearly_less_traffic(
        traffic_stack: TrafficFactory) -> None:
    stack = await traffic_stack({"inventory": 3, "shipping": 1, "orders": 1}, hosts=2)
    inventory = stack.instances["inventory"]
    await add_fault(stack.api.session, inventory.urls[0], {"path": "/**", "fault": "latency=1000"})
    # A steady stream, not a burst: a burst spreads evenly before any reply comes back.
    results = await stack.run_all("traffic_order", 60, spread=0.03)
    hits = inventory.requests()
    share = hits[0] / sum(hits)
    print(f"\nslow instance (+1 s) of 3, 60 sagas over 1.8 s: requests per instance {hits}, "
          f"slow share {share:.1%} (an even split would be 33.3%)")
    assert statuses(results) == Counter({"completed": 60})
    assert share < 0.2


async def wait_for_state(stack: TrafficStack, url: str, state: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 30:
        snapshots = await stack.host_traffic()
        states = {i["state"] for s in snapshots.values() for i in s["instances"]
                  if i["url"] == url}
        if states == {state}:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never {state}: {await stack.host_traffic()}")


async def test_an_instance_is_ejected_then_brought_back(traffic_stack: TrafficFactory) -> None:
    stack = await traffic_stack(
        {"inventory": 3, "shipping": 1, "orders": 1},
        {"inventory": {"outlier": {"consecutive_failures": 2, "ejection": "1s",
                                   "max_ejection": "4s"},
                       "health_path": "/_health", "health_interval": "200ms",
                       "health_timeout": "1s"}})
    inventory = stack.instances["inventory"]
    bad = inventory.urls[2]
    await stack.run_all("traffic_order", 3)  # starts the health task
    await add_fault(stack.api.session, bad, {"path": "/**", "fault": "error"})
    ejected_after = await wait_for_state(stack, bad, "open")
    before = inventory.requests()
    results = await stack.run_all("traffic_order", 20, spread=0.02)
    during = [b - a for a, b in zip(before, inventory.requests(), strict=True)]
    assert statuses(results) == Counter({"completed": 20})
    assert during[2] == 0 and sum(during) >= 20  # nothing reached the ejected instance

    await clear_faults(stack.api.session, bad)
    back_after = await wait_for_state(stack, bad, "closed")
    before = inventory.requests()
    results = await stack.run_all("traffic_order", 20, spread=0.02)
    after = [b - a for a, b in zip(before, inventory.requests(), strict=True)]
    print(f"\neject and recover: out of rotation {ejected_after:.2f} s after its health "
          f"check failed, reserve requests per instance while out {during}; back "
          f"{back_after:.2f} s after it passed, then {after}")
    assert statuses(results) == Counter({"completed": 20})
    # Ties go at random among the instances with the fewest attempts in flight: with
    # none to the instance that came back, show what the host saw of each instance.
    assert after[2] > 0, await stack.host_traffic()


async def test_a_saturated_bulkhead_refuses_as_retryable_and_isolates_the_service(
        traffic_stack: TrafficFactory) -> None:
    stack = await traffic_stack(
        {"shipping": 1, "notifications": 1},
        {"shipping": {"max_concurrency": 2, "queue_size": 2, "queue_timeout": "300ms"}})
    await add_fault(stack.api.session, stack.instances["shipping"].urls[0],
                    {"path": "/**", "fault": "latency=1000"})
    baseline = await fast_latencies(stack, 10)
    slow = asyncio.ensure_future(stack.run_all("traffic_slow", 12))
    await asyncio.sleep(1.0)  # the bulkhead is full and its queue is turning attempts away
    during = await fast_latencies(stack, 10)
    [snapshot] = (await stack.host_traffic()).values()
    [bulkhead] = snapshot["bulkheads"]
    slow_results = await slow
    refusals = [e for r in slow_results for e in await stack.events(r["execution_id"])
                if e["type"] == "step_attempt_failed"]
    print(f"\nbulkhead 2 + queue 2 on shipping (1 s replies), 12 sagas: {len(refusals)} "
          f"attempts refused as retryable, bulkhead at 1 s {bulkhead}; notifications saga "
          f"latency median {statistics.median(baseline) * 1000:.0f} ms idle, "
          f"{statistics.median(during) * 1000:.0f} ms (max {max(during) * 1000:.0f} ms) "
          f"meanwhile")
    assert statuses(slow_results) == Counter({"completed": 12})
    assert refusals and all(e["outcome"] == "retryable" and e["retry_allowed"]
                            and "bulkhead full" in e["error"] for e in refusals)
    assert bulkhead["active"] <= 2 and bulkhead["rejected"] > 0
    assert max(during) < 1.0  # never waited behind a shipping reply


async def fast_latencies(stack: TrafficStack, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.monotonic()
        [result] = await stack.run_all("traffic_fast", 1)
        assert result["status"] == "completed", result
        times.append(time.monotonic() - started)
    return times
