"""Where executions live: the host core, and the Ray actors that carry it.

:class:`HostCore` contract:
- Owns the runners of the executions assigned to it, at most one per execution
  id, each as an asyncio task on the host's event loop.
- Builds each runner's state from the journal (or from the start events the API
  hands over, saving a read); it never invents history.
- ``start`` is idempotent: starting an execution that already runs here, or that
  is terminal, does nothing.
- Retries nothing itself: the runner and the core own retries. If the host dies,
  its executions are resumed elsewhere from the journal.

``SagaHost`` (shared placement) runs many executions; ``DedicatedHost`` runs one
and exits when it ends. Both are async Ray actors wrapping a ``HostCore``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from coordinator.core import events as ev
from coordinator.core.definition import SagaDefinition
from coordinator.core.replay import replay
from coordinator.core.state import ExecutionState
from coordinator.invoker import Endpoint, HttpInvoker
from coordinator.journal.base import Journal
from coordinator.journal.factory import journal_from_url
from coordinator.runner import ExecutionRunner
from coordinator.telemetry import adopt_otel_env, host_tracing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostConfig:
    """Everything a host needs, shipped to its Ray actor once at creation."""

    journal_url: str
    definitions: tuple[SagaDefinition, ...]
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    pool_size: int = 512
    # The API's OTEL_* settings: a host on another node does not share its environment.
    otel_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    host: str
    node_id: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {"host": self.host, "node_id": self.node_id}


class HostCore:
    def __init__(self, host_id: str, config: HostConfig, node_id: str | None = None) -> None:
        self.placement = Placement(host_id, node_id)
        self._definitions = {(d.name, d.version): d for d in config.definitions}
        self._journal: Journal = journal_from_url(config.journal_url)
        self._tracing = host_tracing(config.otel_env, config.definitions)
        self._invoker = HttpInvoker(config.endpoints, pool_size=config.pool_size,
                                    on_send=self._tracing.on_send if self._tracing else None)
        self._runners: dict[str, ExecutionRunner] = {}
        self._opened = False
        self._opening = asyncio.Lock()
        self.started = 0
        self.finished = 0

    async def _open(self) -> None:
        if self._opened:
            return
        async with self._opening:
            if not self._opened:
                await self._journal.open()
                self._opened = True

    async def close(self) -> None:
        if self._tracing is not None:
            await self._tracing.aclose()
        await self._invoker.close()
        if self._opened:
            await self._journal.close()

    def definition(self, saga: str, version: int) -> SagaDefinition:
        return self._definitions[(saga, version)]

    async def start(
        self, execution_id: str, events: Sequence[ev.Event] | None = None
    ) -> dict[str, str | None]:
        """Run an execution here unless it already runs here or has ended."""
        if execution_id not in self._runners:
            state, definition = await self._load(execution_id, events)
            if state is not None and definition is not None and not state.terminal:
                self._launch(definition, state, [])
        return self.placement.as_dict()

    async def cancel(self, execution_id: str, reason: str | None) -> str:
        """``accepted``, ``refused`` (terminal or past the pivot) or ``not_found``."""
        runner = self._runners.get(execution_id) or await self._revive(execution_id)
        if runner is None:
            return "not_found" if not await self._exists(execution_id) else "refused"
        return "accepted" if await runner.cancel(reason) else "refused"

    async def resume(self, execution_id: str) -> str:
        """Resume a ``failed`` execution; ``accepted``, ``refused`` or ``not_found``."""
        if execution_id in self._runners:
            return "accepted" if await self._runners[execution_id].resume() else "refused"
        state, definition = await self._load(execution_id, None)
        if state is None or definition is None:
            return "not_found"
        if state.status != "failed":
            return "refused"
        runner = self._launch(definition, state, [ev.ResumeRequested(at=time.time())])
        # Answer only once the resume is journaled, so a read right after sees it.
        waiters = [asyncio.ensure_future(e.wait()) for e in (runner.opened, runner.finished)]
        _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()
        return "accepted" if runner.opened.is_set() else "refused"

    async def wait(self, execution_id: str, timeout: float | None) -> bool:
        """True when the execution is not running here any more within ``timeout``."""
        runner = self._runners.get(execution_id)
        if runner is None:
            return True
        try:
            await asyncio.wait_for(runner.finished.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def recover(self) -> int:
        """Resume the unfinished executions this host owned last (after it restarted)."""
        await self._open()
        resumed = 0
        for row in await self._journal.non_terminal():
            events = [stored.event for stored in await self._journal.read(row.execution_id)]
            owners = [e.host for e in events if isinstance(e, ev.HostAssigned)]
            if owners and owners[-1] == self.placement.host and row.execution_id not in \
                    self._runners:
                await self.start(row.execution_id, events)
                resumed += 1
        return resumed

    def stats(self) -> dict[str, Any]:
        return {**self.placement.as_dict(), "running": len(self._runners),
                "started": self.started, "finished": self.finished}

    async def _revive(self, execution_id: str) -> ExecutionRunner | None:
        """Load a non-terminal execution this host does not run yet (after a restart)."""
        state, definition = await self._load(execution_id, None)
        if state is None or definition is None or state.terminal:
            return None
        return self._launch(definition, state, [])

    async def _exists(self, execution_id: str) -> bool:
        return await self._journal.get_execution(execution_id) is not None

    async def _load(
        self, execution_id: str, events: Sequence[ev.Event] | None
    ) -> tuple[ExecutionState | None, SagaDefinition | None]:
        await self._open()
        if events is None:
            events = [stored.event for stored in await self._journal.read(execution_id)]
        if not events or not isinstance(events[0], ev.ExecutionStarted):
            return None, None
        start = events[0]
        definition = self._definitions.get((start.saga, start.version))
        if definition is None:
            log.error("execution %s needs %s v%s, not loaded on this host",
                      execution_id, start.saga, start.version)
            return None, None
        return replay(definition, events), definition

    def _launch(
        self, definition: SagaDefinition, state: ExecutionState, opening: list[ev.Event]
    ) -> ExecutionRunner:
        placement = ev.HostAssigned(at=time.time(), host=self.placement.host,
                                    node_id=self.placement.node_id)
        runner = ExecutionRunner(
            definition, state, self._journal, self._invoker, opening=[placement, *opening],
            around_attempt=self._tracing.around_attempt if self._tracing else None)
        self._runners[state.execution_id] = runner
        self.started += 1
        task = asyncio.get_running_loop().create_task(self._drive(runner))
        task.add_done_callback(lambda done: self._forget(state.execution_id, done))
        return runner

    async def _drive(self, runner: ExecutionRunner) -> ExecutionState:
        state = await runner.run()
        if self._tracing is not None and state.terminal and not runner.fenced_out:
            # Registered before this task ends, so close() (a dedicated host's exit) waits.
            self._tracing.execution_ended(state, lambda: self._history(state.execution_id))
        return state

    async def _history(self, execution_id: str) -> list[ev.Event]:
        return [stored.event for stored in await self._journal.read(execution_id)]

    def _forget(self, execution_id: str, task: asyncio.Task[ExecutionState]) -> None:
        self._runners.pop(execution_id, None)
        self.finished += 1
        if not task.cancelled() and task.exception() is not None:
            log.error("runner of %s stopped: %r", execution_id, task.exception())


def _restarted() -> bool:
    """True in an actor that Ray restarted after its process died."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's own property warns about its internals
            return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:
        return False


def _node_id() -> str | None:
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # outside Ray (unit tests of the core host)
        return None


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=10_000)
class SagaHost:
    """A long-lived async actor running many executions (``placement: shared``)."""

    def __init__(self, host_id: str, config: HostConfig) -> None:
        adopt_otel_env(config.otel_env)
        self.core = HostCore(host_id, config, _node_id())
        self._recovery: asyncio.Task[int] | None = None
        if _restarted():
            # Ray runs an async actor's __init__ on its event loop.
            self._recovery = asyncio.get_running_loop().create_task(self.core.recover())

    async def start(self, execution_id: str, events: list[ev.Event] | None = None
                    ) -> dict[str, str | None]:
        return await self.core.start(execution_id, events)

    async def cancel(self, execution_id: str, reason: str | None) -> str:
        return await self.core.cancel(execution_id, reason)

    async def resume(self, execution_id: str) -> str:
        return await self.core.resume(execution_id)

    async def wait(self, execution_id: str, timeout: float | None) -> bool:
        return await self.core.wait(execution_id, timeout)

    async def stats(self) -> dict[str, Any]:
        return self.core.stats()


@ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1_000)
class DedicatedHost:
    """One execution in its own actor (``placement: dedicated``); exits when it ends."""

    def __init__(self, host_id: str, config: HostConfig) -> None:
        adopt_otel_env(config.otel_env)
        self.core = HostCore(host_id, config, _node_id())

    async def start(self, execution_id: str, events: list[ev.Event] | None = None
                    ) -> dict[str, str | None]:
        placement = await self.core.start(execution_id, events)
        asyncio.get_running_loop().create_task(self._exit_when_done(execution_id))
        return placement

    async def _exit_when_done(self, execution_id: str) -> None:
        await self.core.wait(execution_id, None)
        await self.core.close()
        ray.actor.exit_actor()

    async def cancel(self, execution_id: str, reason: str | None) -> str:
        return await self.core.cancel(execution_id, reason)

    async def resume(self, execution_id: str) -> str:
        return await self.core.resume(execution_id)

    async def wait(self, execution_id: str, timeout: float | None) -> bool:
        return await self.core.wait(execution_id, timeout)
