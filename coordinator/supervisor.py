"""The supervisor: hands executions whose lease expired to live hosts.

Contract of :class:`Supervisor` (a detached Ray actor that Ray restarts):
- Owns nothing durable. Every ``interval`` it asks the journal for non-terminal
  executions with an expired lease (dead host, dead node, killed dedicated
  actor, or never dispatched) and asks a live host to start each one.
- Idempotent: a host claims an execution atomically in the journal before it
  runs it, so two sweeps, two supervisors or a racing API dispatch can never
  give an execution two owners.
- Retries everything at the next sweep; a host that does not answer a ping
  within ``ping_timeout`` is left out until it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from coordinator.journal.base import ExecutionRow, Journal
from coordinator.journal.factory import journal_from_url
from coordinator.pool_hashing import rendezvous

log = logging.getLogger(__name__)


class Sweeper:
    """The supervisor's logic, kept apart from Ray so it can be driven directly."""

    def __init__(self, journal: Journal, host_names: list[str], namespace: str,
                 grace: float = 5.0, ping_timeout: float = 2.0) -> None:
        self._journal = journal
        self._names = host_names
        self._namespace = namespace
        self._grace = grace
        self._ping_timeout = ping_timeout
        self._handles: dict[str, Any] = {}
        self.sweeps = 0
        self.handed_over = 0

    async def sweep(self) -> int:
        now = time.time()
        rows = [row for row in await self._journal.expired(now) if self._due(row, now)]
        if not rows:
            self.sweeps += 1
            return 0
        live = await self._live_hosts()
        if not live:
            log.warning("no live host for %d expired executions", len(rows))
            return 0
        names = sorted(live)
        # A host that answered the ping but stalls must not hold up every handover.
        calls = [asyncio.wait_for(live[names[rendezvous(row.execution_id, names)]]
                                  .start.remote(row.execution_id), self._ping_timeout * 5)
                 for row in rows]
        results = await asyncio.gather(*calls, return_exceptions=True)
        handed = sum(1 for result in results if not isinstance(result, BaseException))
        self.sweeps += 1
        self.handed_over += handed
        return handed

    def _due(self, row: ExecutionRow, now: float) -> bool:
        # An execution no host ever claimed may simply be on its way from the API.
        return row.owner is not None or row.updated_at < now - self._grace

    async def _live_hosts(self) -> dict[str, Any]:
        async def answers(name: str) -> tuple[str, Any] | None:
            try:
                handle: Any = self._handles.get(name)
                if handle is None:
                    handle = await asyncio.to_thread(ray.get_actor, name,
                                                     namespace=self._namespace)
                    self._handles[name] = handle
                await asyncio.wait_for(handle.stats.remote(), self._ping_timeout)
                return name, handle
            except Exception:
                self._handles.pop(name, None)
                return None

        found = await asyncio.gather(*(answers(name) for name in self._names))
        return dict(item for item in found if item is not None)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Supervisor:
    def __init__(self, journal_url: str, host_names: list[str], namespace: str,
                 interval: float = 1.0, grace: float = 5.0) -> None:
        self._journal = journal_from_url(journal_url)
        self._sweeper = Sweeper(self._journal, host_names, namespace, grace)
        self._interval = interval
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                # Inside the loop: a supervisor (re)started while the journal is
                # unreachable must keep trying, not end its only task for good.
                await self._journal.open()
                await self._sweeper.sweep()
            except Exception:
                log.exception("supervisor sweep failed; retrying next interval")

    async def stats(self) -> dict[str, int]:
        return {"sweeps": self._sweeper.sweeps, "handed_over": self._sweeper.handed_over}
