"""Earlier rounds' candidates (most now in the code, some refused), kept to re-measure.

See ``bench/experiments.py`` for how patches are applied; docs/performance.md has
what each measured.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from bench.experiments import patch

if TYPE_CHECKING:
    from coordinator.host_core import HostCore


async def _until_claimed(core: HostCore, execution_id: str,
                         timeout: float | None) -> float | bool | None:
    """Poll until a start in progress has its runner; the time left of ``timeout``
    (None: no limit), or False when it ran out first. Shared by the two wait patches."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while execution_id in core._starting and execution_id not in core._runners:
        if timeout is not None and loop.time() - began >= timeout:
            return False
        await asyncio.sleep(0.0005)
    return None if timeout is None else max(0.0, timeout - (loop.time() - began))


@patch("wait-starting")
def _wait_starting() -> None:
    """HostCore.wait also waits for an execution whose start is still in progress.

    The API dispatches the start in the background and then asks the host to
    wait; the wait usually arrives while the host is still claiming the
    execution (``_starting``), finds no runner, answers "not running here" at
    once, and ExecutionService.wait falls back to polling the journal every 50 ms.
    The real change (now in coordinator/host_core.py, commit f7aca18): an event per
    execution in ``_starting``, awaited by ``wait``. Kept to reproduce the A/B against
    older code; on current code it changes nothing.
    """
    from coordinator.host_core import HostCore

    original = HostCore.wait

    async def wait(self: HostCore, execution_id: str, timeout: float | None) -> bool:
        left = await _until_claimed(self, execution_id, timeout)
        if left is False:
            return False
        return await original(self, execution_id, left)

    HostCore.wait = wait  # type: ignore[method-assign]


@patch("switch-interval")
def _switch_interval() -> None:
    """sys.setswitchinterval(0.0005) instead of CPython's 5 ms.

    The journal's writer thread holds SQLite's file lock (shared by the API and
    every host process) from BEGIN IMMEDIATE to COMMIT, and needs the GIL between
    each statement; while the event loop thread runs, each hand-over can take up
    to the switch interval, and every other process waits for the lock meanwhile.
    """
    import sys

    sys.setswitchinterval(0.0005)


@patch("shallow-row")
def _shallow_row() -> None:
    """sqlite_sql.create binds the new row with a shallow dict, not dataclasses.asdict.

    asdict deep-copies every field; it runs on the writer thread inside the
    transaction, i.e. while the file lock is held.
    """
    from coordinator.journal import sqlite_sql

    def shallow(row: object) -> dict[str, object]:
        return {name: getattr(row, name) for name in row.__slots__}  # type: ignore[attr-defined]

    sqlite_sql.asdict = shallow  # type: ignore[assignment]


@patch("merge-appends")
def _merge_appends() -> None:
    """One journal append per decision round instead of two.

    Today a runner appends a reply's event (``StepAttemptSucceeded``), then decides
    and appends the next round (``StepAttemptStarted`` of the next step) in a
    second transaction; likewise ``HostAssigned`` and the first step's start, and
    the last reply and ``ExecutionCompleted``. Here the judged events are applied
    to the state at once and written together with the events of the decision they
    lead to, in one append. Still nothing is sent before everything that led to it
    is durable (a crash before the combined append loses both, and recovery
    re-sends the attempt with the same idempotency key, as today). A 3-step saga
    goes from 8 host appends to 4. Benchmark-only: the runner's fault checkpoints
    (tests' crash injection) are not reproduced here.
    """
    from coordinator import runner as r
    from coordinator.core.commands import Invoke, WaitUntil
    from coordinator.core.decide import decide, interrupted
    from coordinator.core.replay import apply as apply_event

    cls = r.ExecutionRunner

    async def run(self: r.ExecutionRunner) -> object:
        self._deferred = []  # type: ignore[attr-defined]
        try:
            first = [*self._opening, *interrupted(self.state, self._clock())]
            for event in first:
                apply_event(self.definition, self.state, event)
            self._deferred = list(first)  # type: ignore[attr-defined]
            if not await self._step():
                if self._deferred:  # type: ignore[attr-defined]
                    await self._write([])
                self.opened.set()
                await self._wait()
            self.opened.set()
            while not self.state.terminal:
                if not await self._step():
                    await self._wait()
        except r._Stop:
            pass
        finally:
            self._shutdown()
        return self.state

    async def step(self: r.ExecutionRunner) -> bool:
        now = self._clock()
        events: list[object] = []
        sends: list[Invoke] = []
        wake = None
        for command in decide(self.definition, self.state, now):
            if isinstance(command, WaitUntil):
                wake = command.at
            elif isinstance(command, Invoke):
                events.append(command.started(now))
                sends.append(command)
            else:
                events.append(command)
        if not events:
            if self._deferred:  # type: ignore[attr-defined]
                await self._write([])
            self._arm_timer(wake)
            return False
        await self._write(events)  # type: ignore[arg-type]
        for command in sends:
            self._spawn(command)
        return True

    async def wait(self: r.ExecutionRunner) -> None:
        message = await self._inbox.get()
        batch = [message]
        while not self._inbox.empty():
            batch.append(self._inbox.get_nowait())
        if r._ABANDON in batch:
            raise r._Stop()
        replies = [m for m in batch if isinstance(m, r._Replied)]
        if replies:
            judged = [self._judge(m) for m in replies]
            for event in judged:
                apply_event(self.definition, self.state, event)
            self._deferred.extend(judged)  # type: ignore[attr-defined]
            if self.state.terminal:
                await self._write([])
        controls = [m for m in batch if isinstance(m, r._Control)]
        if controls and self._deferred:  # type: ignore[attr-defined]
            await self._write([])
        for control in controls:
            await self._apply_control(control)

    async def write(self: r.ExecutionRunner, events: list[object]) -> None:
        for event in events:
            apply_event(self.definition, self.state, event)  # type: ignore[arg-type]
        everything = [*self._deferred, *events]  # type: ignore[attr-defined]
        self._deferred = []  # type: ignore[attr-defined]
        after = self.state.last_seq - len(everything)
        for delay in (*r.JOURNAL_RETRY_SECONDS, None):
            try:
                await self._journal.append(self.execution_id, after, everything,
                                           self.state.status, fence=self.fence)
                return
            except r.JournalUnavailable:
                if delay is None:
                    raise
                await asyncio.sleep(delay)
            except Exception:
                self.fenced_out = True
                raise r._Stop() from None

    cls.run = run  # type: ignore[method-assign,assignment]
    cls._step = step  # type: ignore[method-assign]
    cls._wait = wait  # type: ignore[method-assign]
    cls._write = write  # type: ignore[method-assign,assignment]


@patch("wait-returns-state")
def _wait_returns_state() -> None:
    """A waited start costs the API no journal read: the host's wait answers the state.

    Today ``POST ?wait`` reads and replays the journal before asking the host to
    wait, and again after the host answers. Here the host's ``wait`` answers the
    runner's terminal ``ExecutionState`` (it is durable by then: the terminal
    append precedes ``finished``) and the API builds the view from it; the state
    the API just journaled at the start stands in for the first read. Includes
    ``wait-starting``. The real change: a ``wait`` answer of ``{"done", "state"}``
    (or ``start(..., wait=seconds)``), and ``ExecutionService.start`` handing its
    replayed state to ``wait``.
    """
    from coordinator.executions import ExecutionService
    from coordinator.host_core import HostCore
    from coordinator.views import execution_view

    async def host_wait(self: HostCore, execution_id: str, timeout: float | None) -> object:
        left = await _until_claimed(self, execution_id, timeout)
        if left is False:
            return False
        runner = self._runners.get(execution_id)
        if runner is None:
            return True
        try:
            await asyncio.wait_for(runner.finished.wait(), left)
        except TimeoutError:
            return False
        return runner.state if runner.state.terminal else True

    HostCore.wait = host_wait  # type: ignore[method-assign,assignment]

    original_start = ExecutionService.start
    original_wait = ExecutionService.wait

    async def start(self: ExecutionService, saga: str, value: object,
                    **kwargs: object) -> tuple[dict[str, object], bool]:
        view, created = await original_start(self, saga, value, **kwargs)  # type: ignore[arg-type]
        if created:
            definition = self.catalog.get(str(view["saga"]), int(view["version"]))  # type: ignore[call-overload]
            fresh = self.__dict__.setdefault("_bench_fresh", {})
            fresh[view["execution_id"]] = definition
        return view, created

    async def wait(self: ExecutionService, execution_id: str, seconds: float) -> dict[str, object]:
        definition = self.__dict__.get("_bench_fresh", {}).pop(execution_id, None)
        if definition is None:
            return await original_wait(self, execution_id, seconds)
        try:
            answer = await self.pool.call(definition.placement, execution_id, "wait", seconds)
        except Exception:
            answer = None
        if answer is not None and not isinstance(answer, bool) and answer.terminal:
            return execution_view(definition, answer, self._jaeger_url)
        return await original_wait(self, execution_id, seconds)

    ExecutionService.start = start  # type: ignore[method-assign,assignment]
    ExecutionService.wait = wait  # type: ignore[method-assign]


@patch("journal-wait")
def _journal_wait() -> None:
    """``?wait`` without a Ray call per request: one journal poll for all waiters.

    Each waiting request costs today one Ray actor call (``host.wait``), about
    0.75 ms of CPU in the caller and as much again in Ray and the host (see
    docs/performance.md). Here the API keeps the waiting ids in one table and a
    single task asks the journal every 2 ms which of them are terminal (one
    ``SELECT ... WHERE execution_id IN (...)``), then reads and replays each
    finished one once. SQLite only (it uses the journal's reader pool directly).
    """
    from coordinator.executions import MAX_WAIT_SECONDS, ExecutionService
    from coordinator.views import execution_view

    terminal = ("completed", "compensated", "failed")

    class Poller:
        def __init__(self, service: ExecutionService) -> None:
            self.service = service
            self.waiting: dict[str, asyncio.Future[None]] = {}
            self.task: asyncio.Task[None] | None = None

        def wait_for(self, execution_id: str) -> asyncio.Future[None]:
            future = self.waiting.get(execution_id)
            if future is None or future.done():
                future = asyncio.get_running_loop().create_future()
                self.waiting[execution_id] = future
            if self.task is None or self.task.done():
                self.task = asyncio.get_running_loop().create_task(self.run())
            return future

        async def run(self) -> None:
            journal = self.service.journal
            while self.waiting:
                ids = [i for i, f in self.waiting.items() if not f.done()]
                if ids:
                    marks = ",".join("?" * len(ids))
                    query = (f"SELECT execution_id FROM executions WHERE execution_id IN ({marks})"
                             f" AND status IN {terminal}")
                    done = await journal._read(  # type: ignore[attr-defined]
                        lambda conn, q=query, p=ids: [r[0] for r in conn.execute(q, p)])
                    for execution_id in done:
                        future = self.waiting.pop(execution_id, None)
                        if future is not None and not future.done():
                            future.set_result(None)
                for execution_id in [i for i, f in self.waiting.items() if f.done()]:
                    self.waiting.pop(execution_id, None)
                await asyncio.sleep(0.002)

    async def wait(self: ExecutionService, execution_id: str, seconds: float) -> dict[str, object]:
        seconds = min(max(seconds, 0.0), MAX_WAIT_SECONDS)
        poller = self.__dict__.get("_bench_poller")
        if poller is None:
            poller = self.__dict__["_bench_poller"] = Poller(self)
        definition, state = await self.state(execution_id)
        if not state.terminal:
            future = poller.wait_for(execution_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), seconds)
            definition, state = await self.state(execution_id)
        return execution_view(definition, state, self._jaeger_url)

    ExecutionService.wait = wait  # type: ignore[method-assign]


@patch("batch-dispatch")
def _batch_dispatch() -> None:
    """Hand executions to a host in batches: one Ray call per host per batch.

    Today every start costs one Ray actor call (``host.start``). Here the API queues
    hand-overs per host and sends whatever queued while the previous call to that
    host was in flight as one call (group commit, applied to dispatch); the host
    starts the batch concurrently and answers a list. The real change: a
    ``SagaHost.start_many(items)`` method and a per-host queue in ``HostPool``.
    """
    from coordinator.host_core import HostCore
    from coordinator.pool import HostPool

    original_start = HostCore.start

    async def start(self: HostCore, execution_id: object, events: object = None) -> object:
        if isinstance(execution_id, list):
            return list(await asyncio.gather(*(
                original_start(self, eid, evs)  # type: ignore[arg-type]
                for eid, evs in zip(execution_id, events or [None] * len(execution_id),  # type: ignore[arg-type]
                                    strict=True))))
        return await original_start(self, execution_id, events)  # type: ignore[arg-type]

    HostCore.start = start  # type: ignore[method-assign,assignment]
    original_dispatch = HostPool.dispatch

    async def dispatch(self: HostPool, placement: str, execution_id: str,
                       events: object = None) -> dict[str, str | None]:
        if placement == "dedicated":
            return await original_dispatch(self, placement, execution_id, events)  # type: ignore[arg-type]
        queues = self.__dict__.setdefault("_bench_queues", {})
        host = self.host_for(execution_id)
        key = id(host)
        state = queues.setdefault(key, {"items": [], "busy": False})
        future: asyncio.Future[dict[str, str | None]] = asyncio.get_running_loop().create_future()
        state["items"].append((execution_id, events, future))
        if not state["busy"]:
            state["busy"] = True
            asyncio.get_running_loop().create_task(_drain(host, state))
        return await future

    async def _drain(host: object, state: dict[str, object]) -> None:
        try:
            while state["items"]:
                items = state["items"]
                state["items"] = []
                ids = [i for i, _, _ in items]  # type: ignore[attr-defined]
                evs = [e for _, e, _ in items]  # type: ignore[attr-defined]
                try:
                    answers = await host.start.remote(ids, evs)  # type: ignore[attr-defined]
                except Exception as error:
                    for _, _, future in items:  # type: ignore[attr-defined]
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, _, future), answer in zip(items, answers, strict=True):  # type: ignore[call-overload]
                    if not future.done():
                        future.set_result(dict(answer))
        finally:
            state["busy"] = False

    HostPool.dispatch = dispatch  # type: ignore[method-assign,assignment]


@patch("no-per-saga-flush")
def _no_per_saga_flush() -> None:
    """Tracing on: no ``force_flush`` after each saga's spans.

    ``HostTracing._finish`` forces an export (protobuf encoding and an HTTP POST in
    a worker thread) after every execution, which defeats the BatchSpanProcessor:
    one export per saga instead of one per batch of up to 512 spans. Here the
    per-saga flush is skipped; spans leave on the processor's schedule (and on
    close). Only the flush inside ``_finish`` is affected.
    """
    from coordinator.telemetry import host

    original_flush = host.flush
    original_aclose = host.HostTracing.aclose

    async def no_flush(provider: object, timeout: float = 5.0) -> None:
        return None

    async def aclose(self: host.HostTracing) -> None:
        host.flush = original_flush
        await original_aclose(self)

    host.flush = no_flush  # type: ignore[assignment]
    host.HostTracing.aclose = aclose  # type: ignore[method-assign]
