"""The supervisor: owns the SagaHost pool's membership and hands executions over.

Contract of :class:`Supervisor` (a detached Ray actor that Ray restarts):
- Owns nothing durable. Every ``interval`` it asks the journal for non-terminal
  executions with an expired or released lease (dead host, dead node, killed
  dedicated actor, drained host, or never dispatched) and asks a live active
  host to start each one.
- Owns the pool's membership (:class:`~coordinator.membership.HostSet`): it
  creates the hosts, and every ``scale_interval`` sizes the pool between its
  bounds from the executions in flight (:class:`~coordinator.scaling.ScaleDecider`),
  growing by new hosts and shrinking by draining the highest one. API processes
  read the membership from :meth:`Supervisor.membership`; after a restart it is
  rebuilt from the host actors that exist.
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
from collections.abc import Callable
from typing import Any

import ray

from coordinator.host_config import HostConfig
from coordinator.journal.base import ExecutionRow, Journal
from coordinator.journal.factory import journal_from_url
from coordinator.membership import HostSet
from coordinator.pool_hashing import rendezvous
from coordinator.scaling import ScaleDecider, ScalePolicy

log = logging.getLogger(__name__)


class Sweeper:
    """The supervisor's logic, kept apart from Ray so it can be driven directly."""

    def __init__(self, journal: Journal, host_names: Callable[[], list[str]], namespace: str,
                 grace: float = 5.0, ping_timeout: float = 2.0) -> None:
        self._journal = journal
        self._names = host_names  # the active hosts now
        self._namespace = namespace
        self._grace = grace
        self._ping_timeout = ping_timeout
        self._handles: dict[str, Any] = {}
        self.sweeps = 0
        self.handed_over = 0
        self._lock = asyncio.Lock()

    async def sweep(self) -> int:
        async with self._lock:  # drains sweep too: one sweep at a time
            return await self._sweep()

    async def _sweep(self) -> int:
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
        # An execution no host ever claimed (fence 0) may simply be on its way from
        # the API; one released by a draining host (fence >= 1) waits for nobody.
        return row.owner is not None or row.fence > 0 or row.updated_at < now - self._grace

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

        found = await asyncio.gather(*(answers(name) for name in self._names()))
        return dict(item for item in found if item is not None)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Supervisor:
    def __init__(self, config: HostConfig, namespace: str, policy: ScalePolicy,
                 interval: float = 1.0, grace: float = 5.0, scale_interval: float = 1.0,
                 host_cpus: float = 0.0) -> None:
        self._journal = journal_from_url(config.journal_url)
        self._hosts = HostSet(config, namespace, policy, host_cpus)
        self._decider = ScaleDecider(policy)
        self._sweeper = Sweeper(self._journal, self._hosts.active, namespace, grace)
        self._interval = interval
        self._scale_interval = scale_interval
        self._sizes: list[tuple[float, int]] = []  # (time, size) at each change
        loop = asyncio.get_running_loop()
        self._ready = loop.create_task(self._rebuild())
        self._tasks = [loop.create_task(self._run()), loop.create_task(self._scale())]

    async def _rebuild(self) -> None:
        """Rebuild the membership, retrying: until it is done, membership() waits."""
        while True:
            try:
                await self._hosts.rebuild(self._hand_over)
                return
            except Exception:
                log.exception("rebuilding the host pool failed; retrying")
                await asyncio.sleep(self._scale_interval)

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

    async def _scale(self) -> None:
        await self._ready
        self._sizes.append((time.time(), self._hosts.size))
        while True:
            await asyncio.sleep(self._scale_interval)
            try:
                await self.scale_once()
            except Exception:
                log.exception("scaling step failed; retrying next interval")

    async def scale_once(self) -> int:
        """Measure, decide, apply: the pool's active size afterwards."""
        hosts = self._hosts
        before = self._sizes[-1][1]
        await hosts.promote()
        in_flight = sum(int(stats["running"]) for stats in (await hosts.loads()).values())
        planned = hosts.size + len(hosts.pending)
        target = self._decider.decide(planned, in_flight, time.time())
        if target > planned:
            await hosts.grow(target)
        elif target < planned:
            hosts.shrink(target, self._hand_over)
        if hosts.size != before:
            log.info("pool %d -> %d hosts (%d executions in flight)", before, hosts.size,
                     in_flight)
            self._sizes.append((time.time(), hosts.size))
        return hosts.size

    async def _hand_over(self) -> int:
        """One sweep now: what a draining host released goes to a live host at once."""
        await self._journal.open()
        return await self._sweeper.sweep()

    async def membership(self) -> dict[str, Any]:
        """The active hosts (take new work), the draining ones (still own some), handles."""
        await self._ready
        return self._hosts.membership()

    async def stats(self) -> dict[str, Any]:
        hosts = self._hosts
        return {"sweeps": self._sweeper.sweeps, "handed_over": self._sweeper.handed_over,
                "size": hosts.size, "pending": len(hosts.pending),
                "draining": len(hosts.draining), "sizes": list(self._sizes),
                "drained": [vars(record) for record in hosts.drained]}
