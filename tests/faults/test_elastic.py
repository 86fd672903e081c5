"""The elastic SagaHost pool on the session's Ray: it grows under load, new hosts take new
work, and it shrinks back to its minimum by draining hosts that still run executions, with
every execution completed and no step effect twice (the demo services' ledgers).

Placement is by hash, so to be sure each drained host still holds an execution when it
drains, the test picks, among a few started sagas, one that landed on each host that will
be removed, and slows its later steps down with a fault rule matching its order id.
Run with ``-s`` to see the figures (time to scale up and down, executions handed over).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from ray.exceptions import RayActorError

from coordinator.core import events as ev
from coordinator.executions import ExecutionService, SagaCatalog
from coordinator.journal.base import StoredEvent
from coordinator.pool import HostPool
from coordinator.pool_hashing import rendezvous
from tests.faults.conftest import (
    SAGA,
    FaultStack,
    StackFactory,
    assert_ledgers_consistent,
    check_histories,
    order,
    settle,
    start_all,
    views,
)
from tests.runtime.conftest import Api

pytestmark = [pytest.mark.ray]
ELASTIC = {"hosts": None, "scale_interval": 0.2, "scale_down_after": 1.0}


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll ``check`` until true; the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return time.monotonic()
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {timeout:g} s: {what}")


def first_hosts(histories: dict[str, list[StoredEvent]]) -> Counter[str]:
    """How many executions each host launched first."""
    return Counter(next(s.event.host for s in stored if isinstance(s.event, ev.HostAssigned))
                   for stored in histories.values())


def assigned_after(stored: list[StoredEvent]) -> float:
    """Seconds from the start to the first launch on a host."""
    first = next(s.event.at for s in stored if isinstance(s.event, ev.HostAssigned))
    return first - stored[0].event.at


def hosts_of(stored: list[StoredEvent]) -> list[str]:
    return [s.event.host for s in stored if isinstance(s.event, ev.HostAssigned)]


async def slow_down(api: Api, value: dict[str, Any], millis: int) -> None:
    """Slow the charge, shipment and email of one order (fault rules matching its id)."""
    for service, path in (("payments", "/charges"), ("shipping", "/shipments"),
                          ("notifications", "/emails")):
        await api.fault(service, {"method": "POST", "path": path, "fault": f"latency={millis}",
                                  "times": 1, "match_body": {"order_id": value["order_id"]}})


async def pin_slow(stack: FaultStack, api: Api, hosts: set[str], millis: int,
                   tries: int = 40) -> tuple[dict[str, str], list[str]]:
    """Start orders until each of ``hosts`` runs one slowed down by ``millis`` per slow step;
    (host -> execution id, every id started). The others end after their first step (slow,
    to leave time to add the rules)."""
    pinned: dict[str, str] = {}
    started: list[str] = []
    for _ in range(tries):
        value = order({"reserve_inventory": "latency=800"})
        status, body = await api.start(SAGA, value)
        assert status == 202, body
        started.append(body["execution_id"])
        row = await stack.journal.get_execution(body["execution_id"])
        assert row is not None and row.owner is not None
        if row.owner in hosts and row.owner not in pinned:
            await slow_down(api, value, millis)
            pinned[row.owner] = row.execution_id
        if len(pinned) == len(hosts):
            return pinned, started
    pytest.fail(f"no execution landed on each of {hosts} in {tries} starts: {pinned}")


def pool_size_is(stack: FaultStack, size: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(stack.pool.names) == size
    return check


async def test_pool_scales_up_under_load_and_back_down_with_every_execution_completed(
        make_stack: StackFactory, http: aiohttp.ClientSession) -> None:
    stack = await make_stack(lease_seconds=10.0, min_hosts=1, max_hosts=3, target_per_host=4,
                             drain_seconds=1.0, **ELASTIC)
    api = Api(http, stack.demo)
    names = [f"{stack.namespace}-host-{i}" for i in range(3)]
    assert stack.pool.names == names[:1]

    # A load of slow sagas (5 steps of 300 ms): far above 4 in flight per host.
    began = time.monotonic()
    load = [order({step: "latency=300" for step in ("reserve_inventory", "charge_payment",
                                                    "create_shipment", "confirm_order",
                                                    "notify")}) for _ in range(80)]
    starting = asyncio.create_task(start_all(api, load, spread=0.1, concurrency=16))
    grown = await until(pool_size_is(stack, 3), 60, "the pool grew to 3 hosts")
    print(f"\nscale up 1 -> 3 hosts seen by the API {grown - began:.1f} s after the load began")
    # Near the end of the load, one slow execution on each host that will be drained.
    await asyncio.sleep(max(0.0, began + len(load) * 0.1 - 1.5 - time.monotonic()))
    pinned, extra = await pin_slow(stack, api, set(names[1:]), millis=2500)
    ids = await starting
    load_ended = time.monotonic()

    shrunk = await until(pool_size_is(stack, 1), 60, "the pool shrank back to 1 host")
    await until(lambda: supervisor_idle(stack), 30, "the drains ended")
    stats = await stack.pool.supervisor_stats()
    print(f"scale down 3 -> 1 seen by the API {shrunk - load_ended:.1f} s after the last "
          f"start; sizes {[size for _, size in stats['sizes']]}")
    for record in stats["drained"]:
        print(f"  drained {record['host']} in {record['seconds']:.2f} s, "
              f"{record['released']} executions handed over")

    all_ids = [*ids, *extra]
    await settle(stack, all_ids, timeout=90)
    histories = await stack.histories(all_ids)
    check_histories(histories)
    found = await views(api, all_ids)
    assert Counter(view["status"] for view in found.values()) == {"completed": len(all_ids)}
    report = await assert_ledgers_consistent(api, found)

    # The sizes went up to 3 and back to 1; new hosts took new work.
    sizes = [size for _, size in stats["sizes"]]
    assert sizes[0] == 1 and max(sizes) == 3 and sizes[-1] == 1, sizes
    launched = first_hosts(histories)
    assert launched[names[1]] > 0 and launched[names[2]] > 0, launched
    # Each drained host still ran its pinned execution, which moved and completed.
    drained = {record["host"]: record for record in stats["drained"]}
    assert set(drained) == set(names[1:]), drained
    assert all(record["released"] >= 1 for record in drained.values()), drained
    for host, execution_id in pinned.items():
        path = hosts_of(histories[execution_id])
        assert path[0] == host and path[-1] != host, (host, path)
    moved = sum(1 for stored in histories.values() if len(set(hosts_of(stored))) > 1)
    print(f"{len(all_ids)} executions completed ({report.forward} forward effects, none "
          f"twice); first hosts {dict(launched)}; {moved} moved host during a drain")


async def supervisor_idle(stack: FaultStack) -> bool:
    stats = await stack.pool.supervisor_stats()
    return bool(stats["draining"] == 0 and stats["size"] == 1)


async def test_a_start_racing_a_drain_is_not_lost(make_stack: StackFactory,
                                                  http: aiohttp.ClientSession) -> None:
    """API processes whose membership is stale hand starts to a host that is draining, and
    then to one already gone; each start is handed back and runs elsewhere."""
    # A high target: the raced starts (short sagas) must not grow the pool again.
    stack = await make_stack(lease_seconds=10.0, min_hosts=1, max_hosts=2, target_per_host=20,
                             drain_seconds=3.0, **ELASTIC)
    api = Api(http, stack.demo)
    names = [f"{stack.namespace}-host-{i}" for i in range(2)]
    slow = {step: "latency=1500" for step in ("reserve_inventory", "charge_payment", "notify")}
    load = [order(slow) for _ in range(40)]
    starting = asyncio.create_task(start_all(api, load, spread=0.1))
    await until(pool_size_is(stack, 2), 60, "the pool grew")
    # While the load lasts, two slow executions on host 1, their slow attempts about half an
    # attempt apart: its drain waits for them, long enough for the raced starts to arrive.
    pinned, extra = await pin_slow(stack, api, {names[1]}, millis=2500)
    await asyncio.sleep(1.25)
    more, extra_too = await pin_slow(stack, api, {names[1]}, millis=2500)
    extra += extra_too
    # Two more "API processes" that read the membership now and never again.
    stale = [await stale_service(stack) for _ in range(2)]
    assert all(service.pool.names == names for service in stale)
    ids = await starting

    async def draining() -> bool:
        stats = await stack.pool.supervisor_stats()
        return bool(stats["draining"] == 1)

    await until(draining, 60, f"{names[1]} began to drain")
    raced_draining = await start_many(stale[0], 12)
    await until(lambda: supervisor_idle(stack), 60, f"{names[1]} was drained and stopped")
    raced_gone = await start_many(stale[1], 12)

    every = [*ids, *extra, *raced_draining, *raced_gone]
    await settle(stack, every, timeout=90)
    histories = await stack.histories(every)
    check_histories(histories)
    found = await views(api, every)
    assert Counter(view["status"] for view in found.values()) == {"completed": len(every)}
    await assert_ledgers_consistent(api, found)
    stats = await stack.pool.supervisor_stats()
    assert [size for _, size in stats["sizes"]] == [1, 2, 1], stats["sizes"]
    [record] = stats["drained"]
    print(f"\n{names[1]} drained in {record['seconds']:.2f} s, handed over "
          f"{record['released']} executions, gave back {record['refused']} starts")
    assert record["refused"] >= 1 and record["released"] >= 1, record
    for execution_id in (pinned[names[1]], more[names[1]]):
        assert hosts_of(histories[execution_id])[:2] == names[::-1], "pinned, moved to host 0"
    for group, label in ((raced_draining, "draining"), (raced_gone, "gone")):
        aimed = [i for i in group if names[rendezvous(i, names)] == names[1]]
        assert aimed, f"no start aimed at the {label} host"
        assert all(hosts_of(histories[i]) == [names[0]] for i in aimed), label
        # Handed back at once, not after the 10 s lease it was created with expired.
        delays = [assigned_after(histories[i]) for i in aimed]
        print(f"{len(aimed)} of {len(group)} starts reached the {label} host; all ran on "
              f"{names[0]}, launched at most {max(delays):.2f} s after their start")
        assert max(delays) < 10.0, delays
    for service in stale:
        await service.close()


async def stale_service(stack: FaultStack) -> ExecutionService:
    pool = HostPool(stack.pool.config, stack.pool.policy, stack.namespace,
                    journal=stack.journal, refresh_seconds=None)
    await pool.start()
    return ExecutionService(SagaCatalog(list(stack.built.registry.all())), stack.journal, pool)


async def start_many(service: ExecutionService, count: int) -> list[str]:
    async def one() -> str:
        value = {"order_id": f"ORD-{uuid.uuid4().hex[:10]}", "faults": {}}
        view, created = await service.start(SAGA, value)
        assert created
        return str(view["execution_id"])

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_a_restarted_supervisor_rebuilds_the_membership(
        make_stack: StackFactory, http: aiohttp.ClientSession) -> None:
    """SIGKILL the supervisor once the pool grew: Ray restarts it, it finds both hosts (so
    the pool does not fall back to its minimum), and later shrinks it as before."""
    stack = await make_stack(lease_seconds=10.0, min_hosts=1, max_hosts=2, target_per_host=4,
                             **ELASTIC)
    api = Api(http, stack.demo)
    load = [order({"reserve_inventory": "latency=1500", "charge_payment": "latency=1500"})
            for _ in range(40)]
    starting = asyncio.create_task(start_all(api, load, spread=0.1))
    await until(pool_size_is(stack, 2), 60, "the pool grew")
    os.kill(await stack.supervisor_pid(), signal.SIGKILL)

    async def rebuilt() -> bool:
        with contextlib.suppress(RayActorError):
            stats = await stack.pool.supervisor_stats()
            # sizes[0] is the size the restarted supervisor rebuilt.
            return bool(stats["sizes"] and stats["sizes"][0][1] == 2)
        return False

    await until(rebuilt, 60, "the restarted supervisor found both hosts")
    ids = await starting
    await until(pool_size_is(stack, 1), 60, "the pool shrank back to 1 host")
    await settle(stack, ids, timeout=90)
    check_histories(await stack.histories(ids))
    found = await views(api, ids)
    assert Counter(view["status"] for view in found.values()) == {"completed": len(ids)}
    await assert_ledgers_consistent(api, found)
    stats = await stack.pool.supervisor_stats()
    print(f"\nafter the supervisor restart: sizes {[size for _, size in stats['sizes']]}, "
          f"drained {[record['host'] for record in stats['drained']]}")
