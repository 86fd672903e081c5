"""Shared fixtures and checks of the host and journal fault tests.

``make_stack`` builds extra coordinator stacks on the session's Ray (``ray_session``): each
has a namespace of its own (so its own SagaHost actors and supervisor), a short lease, its
own journal (SQLite file, or a PostgreSQL URL the test passes), the session's demo services
and the HTTP API on a free port. Everything it built is torn down after the test (the
actors killed with ``pool.shutdown()``, the journal closed), or earlier by ``close()``.

The sagas these tests run are ``crash_order``: ``tests/sagas/faulty_order.yaml`` (same steps,
services, fault headers and compensations) with a 3 s per-attempt timeout and 10 attempts
per step. A host crash or takeover journals every attempt in flight as interrupted, and each
interrupted attempt uses up one of the step's attempts: with ``faulty_order``'s 3 attempts
and 400 ms timeout, two crashes during one step, or a 2-core machine slowed down by a
restarting Ray worker, would compensate a saga the input meant to complete, and no test
could say which status to expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
import ray
from aiohttp import web
from ray.exceptions import ActorUnavailableError, RayActorError

from coordinator.core import events as ev
from coordinator.journal.base import Journal, JournalUnavailable, StoredEvent
from coordinator.pool import HostPool
from coordinator.server import ServeOptions, Stack, build_stack
from services.runner import write_services_file
from tests.conftest import DemoStack, serve_on_loopback
from tests.order_variants import write_order_variant
from tests.runtime.conftest import Api

SAGA = "crash_order"
ORDER_STEPS = ("reserve_inventory", "charge_payment", "create_shipment", "confirm_order",
               "notify")
# Steps a business failure can roll back (notify comes after the pivot).
FAILABLE = ORDER_STEPS[:4]
# Step -> (service, forward op, undo op or None).
EFFECTS: dict[str, tuple[str, str, str | None]] = {
    "reserve_inventory": ("inventory", "reserve", "release"),
    "charge_payment": ("payments", "charge", "refund"),
    "create_shipment": ("shipping", "ship", "cancel"),
    "confirm_order": ("orders", "confirm", None),
    "notify": ("notifications", "send", None),
}
ORDER_SERVICES = tuple(sorted({service for service, _, _ in EFFECTS.values()}))
INTERRUPTED = "attempt interrupted: the host running it stopped"


def write_crash_order(directory: Path) -> Path:
    """Write ``crash_order.yaml`` (see the module docstring) into ``directory``."""
    return write_order_variant(directory, SAGA, timeout="3s", attempts=10, max_backoff="100ms",
                               description="faulty_order with budgets that survive host crashes")


# -- stacks -------------------------------------------------------------------------------


@dataclass
class FaultStack:
    """One extra coordinator: API on ``url``, hosts and supervisor in ``namespace``."""

    url: str
    services: dict[str, str]
    built: Stack
    namespace: str
    journal_url: str
    base: Path
    _runner: web.AppRunner
    _closed: bool = False

    @property
    def demo(self) -> DemoStack:
        """The shape ``tests.runtime.conftest.Api`` takes."""
        return DemoStack(self.url, self.services, self.built, self.base / "journal.db")

    @property
    def pool(self) -> HostPool:
        return self.built.pool

    @property
    def journal(self) -> Journal:
        """The API's own journal (in this process): read histories without HTTP."""
        return self.built.journal

    async def stats(self, timeout: float = 60) -> dict[str, dict[str, Any]]:
        """Host name -> its ``stats()``; waits for restarting hosts (Ray refuses calls to an
        actor while it restarts: ``ActorUnavailableError``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = await asyncio.wait_for(self.pool.stats(), timeout)
                return {str(s["host"]): s for s in found}
            except (ActorUnavailableError, RayActorError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def answering(self, timeout: float = 0.5) -> dict[str, dict[str, Any]]:
        """Host name -> ``stats()`` of the hosts that answer now (not restarting, not stopped)."""
        async def ask(name: str) -> dict[str, Any] | None:
            try:
                handle = await asyncio.to_thread(ray.get_actor, name, namespace=self.namespace)
                return dict(await asyncio.wait_for(handle.stats.remote(), timeout))
            except (ActorUnavailableError, RayActorError, TimeoutError, ValueError):
                return None

        found = await asyncio.gather(*(ask(name) for name in self.pool.names))
        return {str(s["host"]): s for s in found if s is not None}

    async def pids(self, timeout: float = 60) -> dict[str, int]:
        """Host name -> pid of its current process."""
        return {host: int(s["pid"]) for host, s in (await self.stats(timeout)).items()}

    async def restarts(self) -> dict[str, int]:
        """Host name -> how many times Ray restarted it (from the GCS actor table)."""
        names = set(self.pool.names)

        def read() -> dict[str, int]:
            from ray._private import state

            table = state.actors()
            return {str(info["Name"]): int(info["NumRestarts"]) for info in table.values()
                    if info["Name"] in names and info["State"] != "DEAD"}

        return await asyncio.to_thread(read)

    async def supervisor_pid(self) -> int:
        """The pid of the supervisor actor's current process (from the GCS actor table)."""
        name = f"{self.namespace}-supervisor"

        def read() -> int:
            from ray._private import state

            pids = [int(info["Pid"]) for info in state.actors().values()
                    if info["Name"] == name and info["State"] == "ALIVE"]
            assert len(pids) == 1, f"{name}: {pids}"
            return pids[0]

        return await asyncio.to_thread(read)

    async def unfinished(self) -> list[str]:
        return [row.execution_id for row in await self.journal.non_terminal()]

    async def histories(self, ids: Iterable[str]) -> dict[str, list[StoredEvent]]:
        return {execution_id: await self.journal.read(execution_id) for execution_id in ids}

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._runner.cleanup()
        self.pool.shutdown()
        await self.built.close()


class StackFactory(Protocol):
    async def __call__(
        self,
        *,
        hosts: int | None = 2,
        lease_seconds: float = 2.0,
        fault_points: Mapping[str, float] | None = None,
        journal_url: str | None = None,
        **options: Any,
    ) -> FaultStack: ...


@pytest.fixture
async def make_stack(
    ray_session: None, demo_services: dict[str, str], tmp_path: Path
) -> AsyncIterator[StackFactory]:
    """Build stacks on the session's Ray (SQLite journal unless ``journal_url`` is given)."""
    made: list[FaultStack] = []

    async def make(
        *,
        hosts: int | None = 2,
        lease_seconds: float = 2.0,
        fault_points: Mapping[str, float] | None = None,
        journal_url: str | None = None,
        **more: Any,
    ) -> FaultStack:
        """``more``: other :class:`ServeOptions` fields (the elastic pool's bounds)."""
        namespace = f"faults-{uuid.uuid4().hex[:8]}"
        base = tmp_path / namespace
        sagas = base / "sagas"
        await asyncio.to_thread(write_crash_order, sagas)
        await asyncio.to_thread(write_services_file, demo_services, base / "services.yaml")
        url = journal_url or f"sqlite:///{base / 'journal.db'}"
        options = ServeOptions(
            sagas_dir=sagas, services_file=base / "services.yaml", journal_url=url,
            hosts=hosts, namespace=namespace, lease_seconds=lease_seconds,
            fault_points=dict(fault_points or {}), **more)
        started = time.monotonic()
        built = await build_stack(options)
        runner, api_url = await serve_on_loopback(built.app)
        stack = FaultStack(api_url, demo_services, built, namespace, url,
                           base, runner)
        made.append(stack)
        print(f"\nstack {namespace}: {hosts or more} hosts, lease {lease_seconds:g} s, "
              f"fault points {dict(fault_points or {})}, up in "
              f"{time.monotonic() - started:.1f} s")
        return stack

    try:
        yield make
    finally:
        for stack in reversed(made):
            with contextlib.suppress(Exception):
                await stack.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=90)
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        yield session


# -- inputs -------------------------------------------------------------------------------


def seeded(name: str) -> random.Random:
    """A random source whose seed is printed (and can be forced with SAGARAY_FAULT_SEED)."""
    seed = int(os.environ.get("SAGARAY_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\n{name}: seed {seed} (SAGARAY_FAULT_SEED={seed} replays the same choices)")
    return random.Random(seed)


def order(faults: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"order_id": f"ORD-{uuid.uuid4().hex[:10]}", "faults": dict(faults or {})}


def mixed_orders(count: int, rng: random.Random, *, failing: float = 0.2,
                 error_once: float = 0.15, latency: tuple[int, int] = (50, 300),
                 slow_steps: int = 2, fail_at: tuple[str, ...] = FAILABLE
                 ) -> list[dict[str, Any]]:
    """``count`` orders: about ``failing`` of them refused (business) at a random step of
    ``fail_at``, about ``error_once`` meeting one 503 on a random step first, and
    ``slow_steps`` random steps of each slowed down by a latency drawn from ``latency``."""
    values = []
    for _ in range(count):
        faults: dict[str, list[str]] = {}
        for step in rng.sample(ORDER_STEPS, slow_steps):
            faults.setdefault(step, []).append(f"latency={rng.randint(*latency)}")
        if rng.random() < error_once:
            faults.setdefault(rng.choice(ORDER_STEPS), []).append("error-once")
        if rng.random() < failing:
            faults.setdefault(rng.choice(fail_at), []).append("business")
        values.append(order({step: ",".join(parts) for step, parts in faults.items()}))
    return values


def failing_step(value: Mapping[str, Any]) -> str | None:
    for step, spec in (value.get("faults") or {}).items():
        if "business" in spec.split(","):
            return str(step)
    return None


def expected_status(value: Mapping[str, Any]) -> str:
    return "compensated" if failing_step(value) else "completed"


# -- driving and waiting ------------------------------------------------------------------


async def start_all(api: Api, values: list[dict[str, Any]], *, spread: float = 0.0,
                    concurrency: int = 32) -> list[str]:
    """Start every order (202 each), ``spread`` seconds apart; their execution ids."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, value: dict[str, Any]) -> str:
        await asyncio.sleep(index * spread)
        async with gate:
            status, body = await api.start(SAGA, value)
        assert status == 202, (status, body)
        return str(body["execution_id"])

    return list(await asyncio.gather(*(one(i, v) for i, v in enumerate(values))))


@dataclass
class Starts:
    """What ``start_retrying`` saw: execution ids by input, and every answer's status."""

    ids: list[str] = field(default_factory=list)
    answers: Counter[int] = field(default_factory=Counter)
    retry_after: set[str] = field(default_factory=set)


async def start_retrying(api: Api, values: list[dict[str, Any]], *, spread: float = 0.0,
                         concurrency: int = 32, timeout: float = 60) -> Starts:
    """Start every order with an Idempotency-Key, repeating a 503 (same key) until accepted.

    A start that answered 503 may still have been stored (its commit in doubt): the same
    key then answers 200 with that execution. Any status but 202, 200 and 503 fails.
    """
    seen = Starts(ids=[""] * len(values))
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, value: dict[str, Any]) -> None:
        await asyncio.sleep(index * spread)
        key = f"start-{value['order_id']}"
        deadline = time.monotonic() + timeout
        while True:
            async with gate, api.session.post(
                    f"{api.stack.url}/v1/sagas/{SAGA}/executions", json={"input": value},
                    headers={"Idempotency-Key": key}) as response:
                body = await response.json(content_type=None)
                seen.answers[response.status] += 1
                if response.status == 503:
                    seen.retry_after.add(response.headers.get("Retry-After", "(none)"))
            if response.status in (200, 202):
                seen.ids[index] = str(body["execution_id"])
                return
            assert response.status == 503, (response.status, body)
            assert time.monotonic() < deadline, f"start of {key} still refused: {body}"
            await asyncio.sleep(0.2)

    await asyncio.gather(*(one(i, v) for i, v in enumerate(values)))
    return seen


async def settle(stack: FaultStack, ids: Iterable[str], timeout: float) -> float:
    """Wait until none of ``ids`` is unfinished in the journal; the monotonic time it was.

    Fails naming what is still running after ``timeout``; tolerates an unreachable journal.
    """
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    left: set[str] = wanted
    while time.monotonic() < deadline:
        try:
            left = wanted & set(await stack.unfinished())
        except JournalUnavailable:
            left = wanted
        if not left:
            return time.monotonic()
        await asyncio.sleep(0.2)
    rows = [await stack.journal.get_execution(execution_id) for execution_id in sorted(left)[:5]]
    pytest.fail(f"{len(left)} of {len(wanted)} executions not terminal after {timeout:g} s; "
                f"first: {rows}")


async def views(api: Api, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    gate = asyncio.Semaphore(32)

    async def one(execution_id: str) -> dict[str, Any]:
        for _ in range(20):  # a journal just back may answer 503 once or twice
            async with gate:
                status, body = await api.get(f"/v1/executions/{execution_id}")
            if status != 503:
                break
            await asyncio.sleep(0.2)
        assert status == 200, (status, body)
        return dict(body)

    ids = list(ids)
    return dict(zip(ids, await asyncio.gather(*(one(i) for i in ids)), strict=True))


def check_statuses(values: Mapping[str, Mapping[str, Any]],
                   found: Mapping[str, Mapping[str, Any]]) -> Counter[str]:
    """Every execution ended as its input says; the count of each status."""
    wrong = [f"{execution_id}: {view['status']} ({view.get('error')}), expected "
             f"{expected_status(values[execution_id])} for {values[execution_id]['faults']}"
             for execution_id, view in found.items()
             if view["status"] != expected_status(values[execution_id])]
    assert not wrong, f"{len(wrong)} executions ended wrongly:\n" + "\n".join(wrong[:10])
    return Counter(view["status"] for view in found.values())


# -- journal checks -----------------------------------------------------------------------

Outcome = ev.StepAttemptSucceeded | ev.StepAttemptFailed | ev.CompensationSucceeded | \
    ev.CompensationFailed


def history_problems(execution_id: str, stored: list[StoredEvent]) -> list[str]:
    """What breaks "one gapless history written by one owner at a time".

    Sequence numbers are 1..n with no gap or repeat; the history opens with
    ``execution_started`` and ends with its only terminal event; every attempt (step,
    phase, number) starts at most once and ends at most once, after it started, and
    only while it is the step's latest attempt in that phase. A late write of a fenced-out
    owner would end an attempt that the new owner had already journaled as interrupted.
    """
    problems: list[str] = []
    seqs = [s.seq for s in stored]
    if seqs != list(range(1, len(stored) + 1)):
        problems.append(f"sequence numbers are not 1..{len(stored)}: {seqs}")
    if not stored or not isinstance(stored[0].event, ev.ExecutionStarted):
        problems.append("does not open with execution_started")
    terminal = [i for i, s in enumerate(stored) if s.event.type in ev.TERMINAL_EVENT_TYPES]
    if terminal != [len(stored) - 1]:
        problems.append(f"terminal events at {terminal} of {len(stored)}")
    started: set[tuple[str, str, int]] = set()
    ended: set[tuple[str, str, int]] = set()
    latest: dict[tuple[str, str], int] = {}
    for item in stored:
        event = item.event
        if isinstance(event, ev.StepAttemptStarted | ev.CompensationStarted):
            phase = "action" if isinstance(event, ev.StepAttemptStarted) else "compensation"
            key = (event.step, phase, event.attempt)
            if key in started:
                problems.append(f"seq {item.seq}: {key} started twice")
            started.add(key)
            latest[(event.step, phase)] = event.attempt
        elif isinstance(event, Outcome):
            attempt = event.attempt
            phase = "action" if isinstance(
                event, ev.StepAttemptSucceeded | ev.StepAttemptFailed) else "compensation"
            key = (event.step, phase, attempt)
            if key not in started:
                problems.append(f"seq {item.seq}: {key} ended before it started")
            if key in ended:
                problems.append(f"seq {item.seq}: {key} ended twice")
            if latest.get(key[:2]) != attempt:
                problems.append(f"seq {item.seq}: {key} ended after attempt "
                                f"{latest.get(key[:2])} started")
            ended.add(key)
    return [f"{execution_id}: {problem}" for problem in problems]


def check_histories(histories: Mapping[str, list[StoredEvent]]) -> int:
    """Assert every history is clean; the total number of events."""
    problems = [p for execution_id, stored in histories.items()
                for p in history_problems(execution_id, stored)]
    assert not problems, f"{len(problems)} journal problems:\n" + "\n".join(problems[:20])
    return sum(len(stored) for stored in histories.values())


def takeovers(histories: Mapping[str, list[StoredEvent]]) -> int:
    """Launches beyond the first: each ``host_assigned`` after an execution's first one."""
    return sum(max(0, sum(1 for s in stored if isinstance(s.event, ev.HostAssigned)) - 1)
               for stored in histories.values())


def ended_at(stored: list[StoredEvent]) -> float:
    return stored[-1].event.at


# -- ledger checks ------------------------------------------------------------------------


@dataclass
class LedgerReport:
    forward: int = 0
    undone: int = 0
    problems: list[str] = field(default_factory=list)


async def ledgers(api: Api) -> dict[str, list[dict[str, Any]]]:
    return {service: await api.ledger(service) for service in ORDER_SERVICES}


def check_ledgers(found: Mapping[str, Mapping[str, Any]],
                  entries: Mapping[str, list[dict[str, Any]]]) -> LedgerReport:
    """The services' own ledgers agree with each execution's end.

    Each forward effect happened at most once per idempotency key. A completed execution
    has exactly one forward effect per step and nothing undone. A compensated one has one
    forward effect for each step before the step that was refused (none for it and after
    it), and each resource it created was undone exactly once. ``found``: id -> view.
    """
    report = LedgerReport()
    per_execution: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for service, service_entries in entries.items():
        for entry in service_entries:
            execution_id = (entry.get("idempotency_key") or "").partition(":")[0]
            if execution_id in found:
                per_execution.setdefault(execution_id, []).append((service, entry))
    for execution_id, view in found.items():
        mine = per_execution.get(execution_id, [])
        keys = Counter((service, e["idempotency_key"]) for service, e in mine)
        report.problems += [f"{execution_id}: {key} has {n} effects"
                            for key, n in keys.items() if n > 1]
        forward = {e["idempotency_key"].split(":")[1]: e for _, e in mine
                   if e["kind"] == "forward"}
        undone = Counter((service, e["resource"]) for service, e in mine
                         if e["kind"] == "compensation")
        report.forward += len(forward)
        report.undone += sum(undone.values())
        if view["status"] == "completed":
            expected = list(ORDER_STEPS)
        else:
            refused = next((s["name"] for s in view["steps"] if s["status"] == "failed"), None)
            expected = list(ORDER_STEPS[:ORDER_STEPS.index(refused)]) if refused else []
        if sorted(forward) != sorted(expected):
            report.problems.append(f"{execution_id} {view['status']}: forward effects of "
                                   f"{sorted(forward)}, expected {sorted(expected)}")
        should_undo = Counter(
            (EFFECTS[step][0], entry["resource"]) for step, entry in forward.items()
            if view["status"] == "compensated" and EFFECTS[step][2] is not None)
        if undone != should_undo:
            report.problems.append(f"{execution_id} {view['status']}: undone {dict(undone)}, "
                                   f"expected {dict(should_undo)}")
    return report


async def assert_ledgers_consistent(api: Api,
                                    found: Mapping[str, Mapping[str, Any]]) -> LedgerReport:
    report = check_ledgers(found, await ledgers(api))
    assert not report.problems, (f"{len(report.problems)} ledger problems:\n"
                                 + "\n".join(report.problems[:20]))
    return report


# -- processes ----------------------------------------------------------------------------


def worker_log(pid: int) -> str:
    """The stderr of the Ray worker process ``pid`` of this session ("" if not found)."""
    try:
        node = ray._private.worker._global_node
        logs = Path(node.get_logs_dir_path())
    except Exception:
        return ""
    texts = []
    for path in sorted(logs.glob(f"worker-*-{pid}.err")):
        with contextlib.suppress(OSError):
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)

