"""The host core: the runners of one host, their leases, and their journal.

:class:`HostCore` contract:
- Owns the runners of the executions assigned to it, at most one per execution
  id, each an asyncio task on the host's event loop, and the lease of each.
- Runs an execution only after claiming it in the journal; the fencing token
  from the claim goes with every append, so if another host takes over (this
  one paused past its lease) the journal refuses this host's late writes.
- Builds each runner's state from the journal (or from the start events the API
  hands over, saving a read when this is the first claim); it never invents history.
  Handed-over events that hold an opening round for this host and node
  (``core.opening``) have their attempts sent as they are, with no write before.
- ``start`` is idempotent: an execution that already runs here, is terminal, or
  is owned by another live host is left alone.
- Retries nothing itself: the runner and the core own retries. If the host dies,
  its leases expire and the supervisor hands its executions to live hosts.
- ``drain`` (the host is leaving the pool) is idempotent: from then on the host
  takes no new execution (a start handed to it releases the lease it came with
  and answers ``draining``), each runner stops at a safe point, and each lease
  is released in the journal, so the supervisor hands the execution to a live
  host at once instead of after the lease expires.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from coordinator.core import events as ev
from coordinator.core.commands import Invoke
from coordinator.core.definition import SagaDefinition
from coordinator.core.opening import handed_attempts
from coordinator.core.replay import apply, replay
from coordinator.core.state import ExecutionState
from coordinator.faults import FaultPoints
from coordinator.finish_feed import FinishFeed
from coordinator.host_config import HostConfig
from coordinator.invoker import HttpInvoker
from coordinator.journal.base import Journal, SequenceConflict
from coordinator.journal.factory import journal_from_url
from coordinator.leases import LeaseKeeper
from coordinator.metrics.host import HostMetrics
from coordinator.runner import ExecutionRunner
from coordinator.telemetry import host_tracing
from coordinator.views import execution_view

log = logging.getLogger(__name__)
Answer = dict[str, str | None]


class HostCore:
    def __init__(self, host_id: str, config: HostConfig, node_id: str | None = None) -> None:
        self.host_id, self.node_id = host_id, node_id
        self._definitions = {(d.name, d.version): d for d in config.definitions}
        self._journal: Journal = journal_from_url(config.journal_url)
        self._leases = LeaseKeeper(self._journal, host_id, config.lease_seconds, self._lost)
        self._tracing = host_tracing(config.otel_env, config.definitions)
        self._invoker = HttpInvoker(config.endpoints, pool_size=config.pool_size,
                                    on_send=self._tracing.on_send if self._tracing else None)
        self._checkpoint = FaultPoints(config.fault_points) if config.fault_points else None
        self.metrics = HostMetrics()
        observe = getattr(self._journal, "observe", None)
        if observe is not None:
            observe(self.metrics)
        self._runners: dict[str, ExecutionRunner] = {}
        # Executions whose start is claiming them; set once the start has answered.
        self._starting: dict[str, asyncio.Event] = {}
        self.finishes = FinishFeed()
        # Executions whose terminal view the feed carries, to the reader that waits.
        self._report: dict[str, str] = {}
        self.draining = False
        self._drain_seconds = config.drain_seconds
        self._releases: set[asyncio.Task[None]] = set()
        self.released = 0
        self.refused = 0
        self._refusing = 0  # starts giving their lease back: the host may not stop yet
        self._opened = False
        self._opening = asyncio.Lock()
        self.started = 0
        self.finished = 0

    def traffic_snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """This host's per-instance circuit states and bulkhead counters."""
        return self._invoker.traffic_snapshot()

    def placement(self, status: str) -> Answer:
        return {"host": self.host_id, "node_id": self.node_id, "status": status}

    async def _open(self) -> None:
        if self._opened:
            return
        async with self._opening:
            if not self._opened:
                await self._journal.open()
                self._opened = True

    async def close(self) -> None:
        await self._leases.close()
        if self._tracing is not None:
            await self._tracing.aclose()
        await self._invoker.close()
        if self._opened:
            await self._journal.close()

    async def start(self, execution_id: str, events: Sequence[ev.Event] | None = None,
                    fence: int | None = None, report_to: str | None = None) -> Answer:
        """Claim and run an execution here; the answer's ``status`` says what happened.

        ``fence`` is the token of a lease the execution was created with for this
        host: adopted instead of claimed. If another host claimed it meanwhile, the
        journal refuses the first append and the runner stops. With ``report_to``
        (the reader whose request waits for the end), the finish feed carries the
        terminal view to that reader.
        """
        if execution_id in self._runners or execution_id in self._starting:
            if report_to and execution_id in self._runners:
                self._report[execution_id] = report_to
            return self.placement("running")
        if self.draining:
            return await self._refuse(execution_id, fence)
        self._starting[execution_id] = asyncio.Event()
        try:
            _, status = await self._claim_and_launch(execution_id, events, fence)
            if report_to and status == "running":
                # No await since the launch: the runner cannot have ended yet.
                self._report[execution_id] = report_to
            return self.placement(status)
        finally:
            self._starting.pop(execution_id).set()

    async def start_many(
        self, batch: Sequence[tuple[str, Sequence[ev.Event] | None, int | None, str | None]]
    ) -> list[Answer]:
        """:meth:`start` for each item, concurrently; the answers in the same order.

        One start that fails (the journal unreachable) answers ``error`` for itself
        only; its lease expires and the supervisor hands it over.
        """
        results = await asyncio.gather(*(self.start(*item) for item in batch),
                                       return_exceptions=True)
        answers = []
        for (execution_id, *_), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("start of %s failed: %r", execution_id, result)
                answers.append(self.placement("error"))
            else:
                answers.append(result)
        return answers

    async def _claim_and_launch(
        self, execution_id: str, events: Sequence[ev.Event] | None, fence: int | None = None
    ) -> tuple[ExecutionRunner | None, str]:
        state, definition, history = await self._load(execution_id, events)
        if state is None or definition is None:
            return None, "not_found"
        if state.terminal:
            return None, "terminal"
        if fence is not None:
            self._leases.adopt(execution_id, fence)
        else:
            fence = await self._leases.claim(execution_id)
        if fence is None:
            return None, "owned_elsewhere"
        if self.draining:
            # drain() began while this start was claiming: hand it back at once.
            await self._leases.release(execution_id)
            return None, "draining"
        if fence > 1 and events is not None:
            # Someone else may have written since those events were read.
            state, definition, history = await self._load(execution_id, None)
            assert state is not None and definition is not None
        handed = self._handed(definition, history) if fence == 1 and events is not None \
            else None
        return self._launch(definition, state, fence, history, handed), "running"

    async def cancel(self, execution_id: str, reason: str | None) -> str:
        """``accepted``, ``refused`` (terminal or past the pivot), ``owned_elsewhere``
        or ``not_found``."""
        runner = self._runners.get(execution_id)
        if runner is None and self.draining:
            return "owned_elsewhere"  # it is moving to another host: the API retries
        if runner is None:
            runner, status = await self._claim_and_launch(execution_id, None)
            if runner is None:
                return "refused" if status == "terminal" else status
        if await runner.cancel(reason):
            return "accepted"
        # A draining runner refuses what arrives after its last round: not a verdict
        # on the execution, which goes on elsewhere (the API retries there).
        return "owned_elsewhere" if self.draining else "refused"

    async def resume(self, execution_id: str) -> str:
        """Resume a ``failed`` execution: ``accepted``, ``refused``, ``owned_elsewhere``
        or ``not_found``. The resume is journaled before the answer, so a read right
        after sees the execution running again."""
        if execution_id in self._runners:
            if await self._runners[execution_id].resume():
                return "accepted"
            return "owned_elsewhere" if self.draining else "refused"
        if self.draining:
            return "owned_elsewhere"
        state, definition, _ = await self._load(execution_id, None)
        if state is None or definition is None:
            return "not_found"
        if state.status != "failed":
            return "refused"
        # A failed execution has no owner to fence: the sequence check alone decides
        # which of two racing resumes is recorded.
        resumed = ev.ResumeRequested(at=time.time())
        apply(definition, state, resumed)
        try:
            await self._journal.append(execution_id, state.last_seq - 1, [resumed], state.status)
        except SequenceConflict:
            return "refused"
        answer = await self.start(execution_id)
        return "accepted" if answer["status"] in ("running", "owned_elsewhere") else "refused"

    async def wait(self, execution_id: str, timeout: float | None) -> bool:
        """True when the execution is not running here any more within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        starting = self._starting.get(execution_id)
        if starting is not None:
            # The API asks right after handing the start over, usually while this host
            # is still claiming the execution: wait for the runner rather than answer
            # "not here", which would send the caller back to polling the journal.
            try:
                await asyncio.wait_for(starting.wait(), timeout)
            except TimeoutError:
                return False
        runner = self._runners.get(execution_id)
        if runner is None:
            return True
        left = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            await asyncio.wait_for(runner.finished.wait(), left)
        except TimeoutError:
            return False
        return True

    async def recover(self) -> int:
        """After a restart: take back the unfinished executions this host owned."""
        await self._open()
        mine = [row for row in await self._journal.non_terminal() if row.owner == self.host_id]
        answers = await asyncio.gather(*(self.start(row.execution_id) for row in mine))
        return sum(1 for answer in answers if answer["status"] == "running")

    def stats(self) -> dict[str, Any]:
        return {"host": self.host_id, "node_id": self.node_id, "pid": os.getpid(),
                "running": len(self._runners), "started": self.started,
                "finished": self.finished, "draining": self.draining,
                "released": self.released, "refused": self.refused}

    async def drain(self, wait: float) -> int:
        """Start (or go on) draining; wait up to ``wait`` s for it to end.

        Returns how many executions are still here (running, starting, or whose
        lease is being released): 0 means the host may be stopped.
        """
        if not self.draining:
            self.draining = True
            log.info("%s drains %d executions", self.host_id, len(self._runners))
        for runner in list(self._runners.values()):
            runner.drain(self._drain_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self._left() and loop.time() < deadline:
            await asyncio.sleep(0.02)
            for runner in list(self._runners.values()):
                runner.drain(self._drain_seconds)  # launched since: idempotent
        return self._left()

    def _left(self) -> int:
        return len(self._runners) + len(self._starting) + len(self._releases) + self._refusing

    async def _refuse(self, execution_id: str, fence: int | None) -> Answer:
        """A start reaching a draining host: give back the lease it was created with."""
        self.refused += 1
        if fence is not None:
            self._refusing += 1
            try:
                await self._open()
                await self._journal.release(execution_id, self.host_id, fence)
            finally:
                self._refusing -= 1
        return self.placement("draining")

    async def metrics_snapshot(self) -> dict[str, Any]:
        """This host's counters, its running executions and its circuit states."""
        snapshot = self.metrics.snapshot()
        snapshot.update(host=self.host_id, running=len(self._runners))
        try:
            snapshot["traffic"] = self.traffic_snapshot()
        except Exception:
            # The counters are still worth a scrape without the circuit states.
            log.warning("traffic_snapshot failed on %s", self.host_id, exc_info=True)
        return snapshot

    async def _load(
        self, execution_id: str, events: Sequence[ev.Event] | None
    ) -> tuple[ExecutionState | None, SagaDefinition | None, Sequence[ev.Event]]:
        """The execution's state, its definition, and the events it was built from."""
        await self._open()
        if events is None:
            events = [stored.event for stored in await self._journal.read(execution_id)]
        if not events or not isinstance(events[0], ev.ExecutionStarted):
            return None, None, events
        start = events[0]
        definition = self._definitions.get((start.saga, start.version))
        if definition is None:
            log.error("execution %s needs %s v%s, not loaded on this host",
                      execution_id, start.saga, start.version)
            return None, None, events
        return replay(definition, events), definition, events

    def _handed(self, definition: SagaDefinition,
                events: Sequence[ev.Event]) -> list[Invoke] | None:
        """The opening round's attempts, when the creator journaled one for this host.

        Assigned to another host or node (a host restarted elsewhere since the API
        learnt its node): None, and the runner treats them as a takeover would.
        """
        found = handed_attempts(definition, events)
        if found is None:
            return None
        assigned, invokes = found
        if (assigned.host, assigned.node_id) != (self.host_id, self.node_id):
            return None
        return invokes

    def _launch(self, definition: SagaDefinition, state: ExecutionState, fence: int,
                history: Sequence[ev.Event], handed: list[Invoke] | None = None
                ) -> ExecutionRunner:
        # A handed opening round already holds this host's assignment.
        opening: list[ev.Event] = [] if handed else [
            ev.HostAssigned(at=time.time(), host=self.host_id, node_id=self.node_id)]
        runner = ExecutionRunner(
            definition, state, self._journal, self._invoker, opening=opening,
            in_flight=handed or (),
            around_attempt=self._tracing.around_attempt if self._tracing else None,
            fence=fence, checkpoint=self._checkpoint, on_journaled=self.metrics.on_journaled,
            # Tracing builds the saga's spans from it at the end: no journal re-read.
            history=list(history) if self._tracing is not None else None)
        self._runners[state.execution_id] = runner
        self.started += 1
        task = asyncio.get_running_loop().create_task(self._drive(runner))
        task.add_done_callback(lambda done: self._forget(state.execution_id, done))
        return runner

    async def _drive(self, runner: ExecutionRunner) -> ExecutionState:
        state = await runner.run()
        if self._tracing is not None and state.terminal and not runner.fenced_out:
            # Registered before this task ends, so close() (a dedicated host's exit) waits.
            self._tracing.execution_ended(state, runner.history or [])
        return state

    def _lost(self, execution_id: str) -> None:
        runner = self._runners.get(execution_id)
        if runner is not None:
            runner.abandon()

    async def _release(self, execution_id: str) -> None:
        try:
            await self._leases.release(execution_id)
            self.released += 1
        except Exception:
            log.exception("could not release %s; its lease will expire", execution_id)

    def _final_view(self, runner: ExecutionRunner | None,
                    task: asyncio.Task[ExecutionState]) -> tuple[int, dict[str, Any]] | None:
        """``(last_seq, terminal view)`` for the feed, when the terminal state is durable."""
        if runner is None or task.cancelled() or task.exception() is not None \
                or not runner.ended_durably:
            return None
        try:
            return runner.state.last_seq, execution_view(runner.definition, runner.state)
        except Exception:
            # Only an optimisation: the waiter reads the journal instead.
            log.exception("could not build the final view of %s", runner.execution_id)
            return None

    def _forget(self, execution_id: str, task: asyncio.Task[ExecutionState]) -> None:
        runner = self._runners.pop(execution_id, None)
        reader = self._report.pop(execution_id, None)
        final = self._final_view(runner, task) if reader else None
        self.finishes.record(execution_id, final, reader)
        if runner is not None and runner.drained and not runner.fenced_out:
            # Drained: release now so the supervisor hands it over without waiting.
            release = asyncio.get_running_loop().create_task(self._release(execution_id))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)
        else:
            # A terminal append cleared the lease; any other stop leaves it to expire.
            self._leases.forget(execution_id)
        self.finished += 1
        if not task.cancelled() and task.exception() is not None:
            log.error("runner of %s stopped: %r", execution_id, task.exception())
