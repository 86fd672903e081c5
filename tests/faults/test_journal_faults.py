"""The PostgreSQL journal going away under a running coordinator: restarted, then stopped.

Each test runs a stack (``make_stack``) on a database of its own on a PostgreSQL server of
this module (not the session's ``pg_server``: these tests restart and stop it). While the
server is stopped the supervisor is SIGKILLed too, so Ray restarts it with no journal. Nothing
that was accepted may be lost or left running, no history may fork or repeat an event,
and the services' ledgers must agree. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from blockbuster import BlockBuster

from coordinator.journal.base import Journal, JournalUnavailable
from tests.faults.conftest import (
    SAGA,
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
    start_retrying,
    takeovers,
    views,
)
from tests.pg import (
    PgServer,
    allow_asyncpg_config_reads,
    drop_database,
    fresh_database,
    missing_reason,
)
from tests.runtime.conftest import Api

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL server for this module only; missing binaries fail, never skip."""
    problem = missing_reason()
    if problem is not None:
        pytest.fail(f"the journal fault tests need PostgreSQL: {problem}", pytrace=False)
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def journal_url(own_pg: PgServer,
                      no_blocking_in_event_loop: BlockBuster) -> AsyncIterator[str]:
    """An empty database of the test's own; the server is running again after the test."""
    allow_asyncpg_config_reads(no_blocking_in_event_loop)
    if own_pg.pid is None:
        await asyncio.to_thread(own_pg.start)
    url = await fresh_database(own_pg)
    yield url
    if own_pg.pid is None:
        await asyncio.to_thread(own_pg.start)
    await drop_database(own_pg, url)


async def running(stack: FaultStack, ids: list[str], timeout: float = 20) -> None:
    """Wait until every execution was claimed by a host and sent its first step."""
    deadline = time.monotonic() + timeout
    waiting = set(ids)
    while waiting and time.monotonic() < deadline:
        for execution_id in list(waiting):
            types = {s.event.type for s in await stack.journal.read(execution_id)}
            if {"host_assigned", "step_attempt_started"} <= types:
                waiting.discard(execution_id)
        await asyncio.sleep(0.05)
    assert not waiting, f"not running after {timeout:g} s: {sorted(waiting)}"


class Outage:
    """Pings the journal every 20 ms to time when it stopped and started answering."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.first_failure: float | None = None
        self.last_failure: float | None = None
        self.failures = 0
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        # An event, not cancel(): Python 3.11's wait_for can swallow a cancellation that
        # arrives as the awaited ping completes, and this loop would then never end.
        self._done.set()
        assert self._task is not None
        await self._task

    async def _watch(self) -> None:
        while not self._done.is_set():
            try:
                await asyncio.wait_for(self._journal.ping(), 1.0)
            except (JournalUnavailable, TimeoutError):
                now = time.monotonic()
                self.first_failure = self.first_failure or now
                self.last_failure = now
                self.failures += 1
            await asyncio.sleep(0.02)

    @property
    def seconds(self) -> float:
        if self.first_failure is None or self.last_failure is None:
            return 0.0
        return self.last_failure - self.first_failure


async def test_postgres_restart_under_load(make_stack: StackFactory, own_pg: PgServer,
                                           journal_url: str,
                                           http: aiohttp.ClientSession) -> None:
    rng = seeded("postgres restart")

    stack = await make_stack(hosts=2, lease_seconds=2.0, journal_url=journal_url)
    api = Api(http, stack.demo)
    values = mixed_orders(100, rng, latency=(100, 400), slow_steps=3)
    outage = Outage(stack.journal)
    outage.start()

    async def restart() -> tuple[float, float]:
        await asyncio.sleep(0.8)  # about half of the starts are in, the first sagas running
        began = time.monotonic()
        await asyncio.to_thread(own_pg.restart, "immediate")
        return began, time.monotonic()

    restarting = asyncio.create_task(restart())
    starts = await start_retrying(api, values, spread=0.015, timeout=60)
    down, up = await restarting
    up_wall = time.time() - (time.monotonic() - up)
    await settle(stack, starts.ids, timeout=90)
    done = time.monotonic()
    await outage.stop()
    by_id = dict(zip(starts.ids, values, strict=True))
    assert len(set(starts.ids)) == len(values), "two starts answered with one execution"
    found = await views(api, starts.ids)
    statuses = check_statuses(by_id, found)
    histories = await stack.histories(starts.ids)
    events = check_histories(histories)
    report = await assert_ledgers_consistent(api, found)
    last_end = max(ended_at(h) for h in histories.values()) - up_wall
    print(f"PostgreSQL restart (immediate): pg_ctl took {up - down:.2f} s; the API's journal "
          f"saw it unreachable for {outage.seconds:.2f} s ({outage.failures} failed pings)")
    print(f"starts: {dict(starts.answers)} answers for {len(values)} sagas "
          f"(Retry-After {sorted(starts.retry_after)})")
    print(f"recovery: the last of {len(found)} executions ended {last_end:.1f} s after the "
          f"server was back (seen {done - up:.1f} s after) {dict(statuses)}")
    print(f"journal: {events} events, {takeovers(histories)} relaunches; ledgers: "
          f"{report.forward} forward effects, {report.undone} undone, no duplicate")
    assert outage.failures > 0, "the journal never looked unreachable: no restart happened?"


async def test_api_answers_503_when_journal_unreachable(make_stack: StackFactory,
                                                        own_pg: PgServer, journal_url: str,
                                                        http: aiohttp.ClientSession) -> None:
    rng = seeded("postgres down")
    stack = await make_stack(hosts=2, lease_seconds=2.0, journal_url=journal_url)
    api = Api(http, stack.demo)
    # Accepted before the outage and still running when it begins.
    before = mixed_orders(10, rng, latency=(400, 800), slow_steps=2, failing=0.3)
    accepted = await start_retrying(api, before)
    assert accepted.answers == {202: len(before)}, accepted.answers
    await running(stack, accepted.ids)
    supervisor = await stack.supervisor_pid()
    await asyncio.to_thread(own_pg.stop, "fast")
    stopped = time.monotonic()
    # The supervisor dies too: Ray restarts it while the journal cannot be reached, and
    # only it hands out again the executions whose runners gave up meanwhile.
    os.kill(supervisor, signal.SIGKILL)
    during = [order({"charge_payment": "error-once"}) for _ in range(5)]
    answers: list[tuple[str, int, str | None, str]] = []

    async def call(method: str, path: str, **kwargs: Any) -> None:
        async with http.request(method, stack.url + path, **kwargs) as response:
            route = path.split("?")[0].replace(execution, "{id}")
            answers.append((f"{method} {route}", response.status,
                            response.headers.get("Retry-After"),
                            response.headers.get("Content-Type", "")))

    execution = accepted.ids[0]
    # Longer than the lease and than a runner retries a journal write (3.75 s): the runners
    # give up, their leases run out, and the supervisor must hand the executions out again.
    while time.monotonic() < stopped + 5.0:
        for value in during:
            await call("POST", f"/v1/sagas/{SAGA}/executions", json={"input": value},
                       headers={"Idempotency-Key": f"start-{value['order_id']}"})
        await call("POST", f"/v1/sagas/{SAGA}/executions?wait=2", json={"input": order()})
        await call("GET", f"/v1/executions/{execution}")
        await call("GET", f"/v1/executions/{execution}?wait=1")
        await call("GET", f"/v1/executions/{execution}/events")
        await call("GET", "/v1/executions")
        await call("GET", "/readyz")
        await asyncio.sleep(0.2)
    wrong = [a for a in answers if a[1] != 503 or a[2] is None
             or not a[3].startswith("application/problem+json")]
    assert not wrong, wrong
    await asyncio.to_thread(own_pg.start)
    back = time.monotonic()
    restarted = await stack.supervisor_pid()
    assert restarted != supervisor, "Ray did not restart the supervisor"
    # The same keys again: none was stored while the journal was down, so each is new now.
    later = await start_retrying(api, during, timeout=30)
    first_202 = time.monotonic() - back
    assert later.answers[202] == len(during), later.answers
    after = mixed_orders(5, rng)
    more = await start_retrying(api, after)
    assert more.answers == {202: len(after)}, more.answers
    ids = [*accepted.ids, *later.ids, *more.ids]
    values = dict(zip(ids, [*before, *during, *after], strict=True))
    await settle(stack, ids, timeout=60)
    done = time.monotonic()
    found = await views(api, ids)
    statuses = check_statuses(values, found)
    histories = await stack.histories(ids)
    check_histories(histories)
    await assert_ledgers_consistent(api, found)
    by_route: dict[str, int] = {}
    for route, *_ in answers:
        by_route[route] = by_route.get(route, 0) + 1
    print(f"journal down {back - stopped:.1f} s: {len(answers)} answers, all 503 with "
          f"Retry-After {sorted({a[2] for a in answers if a[2]})}: {by_route}")
    print(f"supervisor SIGKILLed during the outage: pid {supervisor} -> {restarted}")
    print(f"after restart: starts accepted again after {first_202:.2f} s "
          f"({dict(later.answers)}); all {len(ids)} executions terminal "
          f"{done - back:.1f} s after the server was back {dict(statuses)}; "
          f"{takeovers(histories)} relaunches")
