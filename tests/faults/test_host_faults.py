"""SagaHosts crashing under load, on the session's Ray: SIGKILL, named fault points, SIGSTOP.

Each test builds its own stack (``make_stack`` in ``conftest.py``): its own namespace, hosts,
supervisor, journal and API, with a 2 s lease. The checks are the same throughout: every
execution ends with the status its input asks for, each journal is one gapless history in
which no attempt ends twice or late, and the demo services' own ledgers show each forward
effect at most once per idempotency key and every compensated saga fully undone. Run with
``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest

from coordinator.core import events as ev
from coordinator.faults import POINTS
from tests.faults.conftest import (
    INTERRUPTED,
    FaultStack,
    StackFactory,
    assert_ledgers_consistent,
    check_histories,
    check_statuses,
    ended_at,
    mixed_orders,
    order,
    seeded,
    settle,
    start_all,
    takeovers,
    views,
    worker_log,
)
from tests.runtime.conftest import Api

pytestmark = [pytest.mark.ray]


async def fence(stack: FaultStack, execution_id: str) -> int:
    row = await stack.journal.get_execution(execution_id)
    assert row is not None, execution_id
    return row.fence


async def test_sigkill_hosts_during_200_sagas(make_stack: StackFactory,
                                              http: aiohttp.ClientSession) -> None:
    rng = seeded("sigkill")
    stack = await make_stack(hosts=2, lease_seconds=2.0)
    api = Api(http, stack.demo)
    values = mixed_orders(200, rng, latency=(100, 400), slow_steps=3)
    kills: list[tuple[float, str, int, int]] = []  # (wall time, host, pid, running there)

    async def killer() -> None:
        # At random moments, a random host among those alive; a restarting host is skipped,
        # so both may be down at once.
        await asyncio.sleep(rng.uniform(0.5, 1.0))
        for _ in range(rng.randint(3, 5)):
            alive = await stack.answering()
            while not alive:
                await asyncio.sleep(0.05)
                alive = await stack.answering()
            host = rng.choice(sorted(alive))
            pid, running = int(alive[host]["pid"]), int(alive[host]["running"])
            os.kill(pid, signal.SIGKILL)
            kills.append((time.time(), host, pid, running))
            await asyncio.sleep(rng.uniform(0.3, 1.0))

    began = time.monotonic()
    killing = asyncio.create_task(killer())
    ids = await start_all(api, values, spread=0.015)
    await killing
    last_kill = kills[-1][0]
    done = await settle(stack, ids, timeout=90)
    by_id = dict(zip(ids, values, strict=True))
    found = await views(api, ids)
    statuses = check_statuses(by_id, found)
    histories = await stack.histories(ids)
    events = check_histories(histories)
    report = await assert_ledgers_consistent(api, found)
    after_kill = max(0.0, *(ended_at(h) - last_kill for h in histories.values()))
    interrupted = sum(1 for h in histories.values() for s in h
                      if getattr(s.event, "error", None) == INTERRUPTED)
    restarts = await stack.restarts()
    pids_after = await stack.pids()

    print(f"kills: {len(kills)}")
    for at, host, pid, running in kills:
        print(f"  +{at - kills[0][0]:5.2f} s  SIGKILL {host} pid {pid} ({running} executions "
              f"running there)")
    print(f"terminal: {sum(statuses.values())} of {len(ids)} {dict(statuses)}")
    print(f"max time to terminal after the last kill: {after_kill:.2f} s; all terminal "
          f"{done - began:.1f} s after the first start")
    print(f"journal: {events} events, {takeovers(histories)} relaunches (host_assigned "
          f"after the first), {interrupted} attempts journaled as interrupted")
    print(f"ledgers: {report.forward} forward effects, {report.undone} undone, no duplicate")
    print(f"Ray restarts per host: {restarts}; pids now {pids_after}")

    assert len(kills) >= 3
    assert sum(restarts.values()) >= len(kills)
    assert sum(running for *_, running in kills) > 0, "no kill hit a host with work"
    assert takeovers(histories) > 0 and interrupted > 0


async def test_named_fault_points_each_hard_exit_in_turn(make_stack: StackFactory,
                                                         http: aiohttp.ClientSession) -> None:
    rng = seeded("fault points")
    # Chosen so that each point crashes a host a few times per batch of 20 sagas: the
    # host is restarted with the same probabilities, so a higher one would keep it down.
    probability = {"after_step_started": 0.04, "after_reply": 0.04,
                   "during_compensation": 0.1, "after_final_event": 0.12}
    assert set(probability) == set(POINTS)
    figures: list[str] = []
    for point in POINTS:
        stack = await make_stack(hosts=2, lease_seconds=2.0,
                                 fault_points={point: probability[point]})
        api = Api(http, stack.demo)
        began = time.monotonic()
        crashes, batches, ids = 0, 0, []
        values: dict[str, dict[str, Any]] = {}
        # Rarely a batch hits its point too seldom to crash at all; another batch follows.
        while crashes == 0 and batches < 3:
            batches += 1
            batch = mixed_orders(20, rng, failing=0.45, latency=(20, 120),
                                 fail_at=("create_shipment", "confirm_order"))
            started = await start_all(api, batch)
            values.update(zip(started, batch, strict=True))
            ids += started
            await settle(stack, started, timeout=60)
            crashes = sum((await stack.restarts()).values())
        found = await views(api, ids)
        statuses = check_statuses(values, found)
        histories = await stack.histories(ids)
        check_histories(histories)
        await assert_ledgers_consistent(api, found)
        interrupted = sum(1 for h in histories.values() for s in h
                          if getattr(s.event, "error", None) == INTERRUPTED)
        figures.append(
            f"  {point:20} p={probability[point]:<5} {crashes:2} host crashes (Ray restarts), "
            f"{takeovers(histories):2} relaunches, {interrupted:2} interrupted attempts; "
            f"{len(ids)} sagas {dict(statuses)} in {time.monotonic() - began:.1f} s "
            f"({batches} batch{'es' if batches > 1 else ''})")
        print(figures[-1])
        await stack.close()
        assert crashes > 0, f"{point}: no crash in {batches} batches"
    print("fault points:\n" + "\n".join(figures))


async def test_zombie_owner_is_fenced(make_stack: StackFactory,
                                      http: aiohttp.ClientSession) -> None:
    lease = 2.0
    stack = await make_stack(hosts=2, lease_seconds=lease)
    api = Api(http, stack.demo)
    pids = await stack.pids()
    # Parked on charge_payment (2.5 s per attempt) long enough to stop the owner mid-call.
    values = [order({"charge_payment": "latency=2500"}) for _ in range(8)]
    ids = await start_all(api, values)
    owners: dict[str, str] = {}
    deadline = time.monotonic() + 20
    while len(owners) < len(ids) and time.monotonic() < deadline:
        for execution_id in ids:
            history = await stack.journal.read(execution_id)
            if any(isinstance(s.event, ev.StepAttemptStarted) and s.event.step ==
                   "charge_payment" for s in history):
                hosts = [s.event.host for s in history if isinstance(s.event, ev.HostAssigned)]
                owners[execution_id] = hosts[-1]
        await asyncio.sleep(0.05)
    assert len(owners) == len(ids), f"not all parked on charge_payment: {owners}"
    zombie = Counter(owners.values()).most_common(1)[0][0]
    parked = sorted(i for i, host in owners.items() if host == zombie)
    fences = {i: await fence(stack, i) for i in parked}
    pid = pids[zombie]
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # The supervisor hands them to the other host once their lease ran out.
        taken: dict[str, float] = {}
        while len(taken) < len(parked) and time.monotonic() < stopped + 30:
            for execution_id in parked:
                row = await stack.journal.get_execution(execution_id)
                if execution_id not in taken and row is not None and row.owner not in (
                        None, zombie):
                    taken[execution_id] = time.monotonic() - stopped
            await asyncio.sleep(0.05)
        assert len(taken) == len(parked), f"taken over: {taken} of {parked}"
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    await settle(stack, ids, timeout=60)
    by_id = dict(zip(ids, values, strict=True))
    found = await views(api, ids)
    statuses = check_statuses(by_id, found)
    histories = await stack.histories(ids)
    check_histories(histories)
    await assert_ledgers_consistent(api, found)

    # After the takeover's host_assigned, no event of the zombie: every attempt it had in
    # flight ends as "interrupted", written by the new owner with the takeover.
    late: list[str] = []
    for execution_id in parked:
        history = histories[execution_id]
        assigned = [(i, s.event.host) for i, s in enumerate(history)
                    if isinstance(s.event, ev.HostAssigned)]
        last_zombie = max(i for i, host in assigned if host == zombie)
        takeover = min(i for i, _ in assigned if i > last_zombie)
        before = {(s.event.step, s.event.attempt) for s in history[:takeover]
                  if isinstance(s.event, ev.StepAttemptStarted)}
        for item in history[takeover:]:
            event = item.event
            if isinstance(event, ev.StepAttemptSucceeded | ev.StepAttemptFailed) and \
                    (event.step, event.attempt) in before and \
                    getattr(event, "error", None) != INTERRUPTED:
                late.append(f"{execution_id} seq {item.seq}: {event.type} {event.step} "
                            f"attempt {event.attempt}")
        hosts = [s.event.host for s in history[takeover:] if isinstance(s.event, ev.HostAssigned)]
        assert zombie not in hosts, (execution_id, hosts)
        assert await fence(stack, execution_id) > fences[execution_id]
    assert not late, late
    # The zombie woke up, tried, was refused (or saw its leases gone), and let go.
    zombie_stats = (await stack.stats())[zombie]
    lines = worker_log(pid).splitlines()
    refused = {i for i in parked if any(i in line and "journal append refused" in line
                                        and "FencedOut" in line for line in lines)}
    lost = {i for i in parked if any(i in line and "lost the lease" in line for line in lines)}
    print(f"zombie {zombie} (pid {pid}) owned {len(parked)} of {len(ids)} parked sagas; "
          f"stopped {resumed - stopped:.1f} s")
    print("takeover after SIGSTOP: " + ", ".join(f"{t:.2f}" for t in sorted(taken.values()))
          + f" s (lease {lease:g} s, sweep every {lease / 4:g} s, then the stopped host's "
          "ping times out)")
    print(f"zombie after SIGCONT (its worker log): {len(refused)} of {len(parked)} executions "
          f"had a late append refused (FencedOut), {len(lost)} found their lease lost; it runs "
          f"{zombie_stats['running']} executions now, same pid {zombie_stats['pid']}")
    print(f"terminal: {dict(statuses)}")
    assert zombie_stats["pid"] == pid, "the zombie was restarted, not resumed"
    assert lines, f"no worker log of pid {pid} found under this Ray session's logs"
    assert refused | lost == set(parked), ("the zombie let go of some silently",
                                           sorted(set(parked) - refused - lost), lines[-20:])
