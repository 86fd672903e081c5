"""The SagaHost pool as seen from the API process: which host runs which execution.

Shared executions map to a host by rendezvous (highest-random-weight) hashing,
a form of consistent hashing: adding or losing one host moves only the
executions that hashed to it. Dedicated executions get an actor of their own,
named after the execution so any API process can find it again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from coordinator.core import events as ev
from coordinator.core.definition import Placement as PlacementKind
from coordinator.handover import HandOverQueue
from coordinator.hosts import DedicatedHost, HostConfig, SagaHost
from coordinator.pool_hashing import rendezvous
from coordinator.supervisor import Supervisor

log = logging.getLogger(__name__)


class HostPool:
    def __init__(self, config: HostConfig, size: int, namespace: str = "sagaray") -> None:
        if size < 1:
            raise ValueError(f"the host pool needs at least one host, not {size}")
        self._config = config
        self._size = size
        self._namespace = namespace
        self._names = [f"{namespace}-host-{index}" for index in range(size)]
        self._hosts: list[ActorHandle] = []
        self._supervisor: ActorHandle | None = None
        self._queues: dict[str, HandOverQueue] = {}

    @property
    def names(self) -> list[str]:
        return list(self._names)

    async def start(self) -> None:
        """Create (or attach to) the hosts and the supervisor; wait until each answers."""
        self._hosts = [
            SagaHost.options(  # type: ignore[attr-defined]
                name=name, namespace=self._namespace, get_if_exists=True,
                lifetime="detached", scheduling_strategy="SPREAD",
            ).remote(name, self._config)
            for name in self._names
        ]
        await asyncio.gather(*(host.stats.remote() for host in self._hosts))
        self._supervisor = Supervisor.options(  # type: ignore[attr-defined]
            name=f"{self._namespace}-supervisor", namespace=self._namespace,
            get_if_exists=True, lifetime="detached",
        ).remote(self._config.journal_url, self._names, self._namespace,
                 interval=self._config.lease_seconds / 4, grace=self._config.lease_seconds)
        await self._supervisor.stats.remote()

    def host_for(self, execution_id: str) -> ActorHandle:
        return self._hosts[rendezvous(execution_id, self._names)]

    def host_name(self, execution_id: str, owner: str | None = None) -> str:
        """The shared host that runs the execution: its recorded owner, else its hash."""
        if owner in self._names:
            return owner
        return self._names[rendezvous(execution_id, self._names)]

    async def finished_since(self, host: str, incarnation: str | None, cursor: int | None,
                             timeout: float) -> dict[str, Any]:
        """One long poll of a host's :class:`~coordinator.finish_feed.FinishFeed`."""
        actor = self._hosts[self._names.index(host)]
        return dict(await actor.finished_since.remote(incarnation, cursor, timeout))

    def lease_for(self, placement: PlacementKind, execution_id: str) -> tuple[str, float] | None:
        """``(host, seconds)`` to create a shared execution already leased to its host.

        The host then adopts fence 1 instead of claiming, one journal write less per
        saga. A host that never receives it lets the lease expire, and the supervisor
        hands the execution to a live host.
        """
        if placement == "dedicated":
            return None
        return self.host_name(execution_id), self._config.lease_seconds

    async def dispatch(
        self, placement: PlacementKind, execution_id: str, events: list[ev.Event] | None = None,
        fence: int | None = None,
    ) -> dict[str, str | None]:
        """Start (or resume) an execution on its host; returns where it runs.

        ``fence`` is the token of a lease the journal already gave that host.
        """
        if placement == "dedicated":
            actor = DedicatedHost.options(  # type: ignore[attr-defined]
                name=self._dedicated_name(execution_id), namespace=self._namespace,
                get_if_exists=True, lifetime="detached",
            ).remote(self._dedicated_name(execution_id), self._config)
            return dict(await actor.start.remote(execution_id, events))
        name = self.host_name(execution_id)
        queue = self._queues.get(name)
        if queue is None:
            actor = self._hosts[self._names.index(name)]
            queue = self._queues[name] = HandOverQueue(actor.start_many.remote)
        return await queue.put(execution_id, events, fence)

    async def call(self, placement: PlacementKind, execution_id: str, method: str,
                   *args: Any, owner: str | None = None) -> Any:
        """Call ``method`` on the actor that runs (or would run) the execution.

        ``owner`` is the host the journal last recorded; it is asked first so a
        cancel reaches the runner that holds the lease.
        """
        actor = await self._owner(placement, execution_id, owner)
        try:
            return await getattr(actor, method).remote(execution_id, *args)
        except RayActorError:
            if placement != "dedicated":
                raise
            # The dedicated actor ended with its execution: a shared host can load it.
            return await getattr(self.host_for(execution_id), method).remote(execution_id, *args)

    async def _owner(self, placement: PlacementKind, execution_id: str,
                     owner: str | None) -> ActorHandle:
        if owner in self._names:
            return self._hosts[self._names.index(owner)]
        if placement == "dedicated":
            name = self._dedicated_name(execution_id)
            try:
                # get_actor is a blocking GCS lookup: keep it off the event loop.
                return await asyncio.to_thread(ray.get_actor, name, namespace=self._namespace)
            except ValueError:
                pass
        return self.host_for(execution_id)

    def _dedicated_name(self, execution_id: str) -> str:
        return f"{self._namespace}-exec-{execution_id}"

    async def stats(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(host.stats.remote() for host in self._hosts)))

    async def host_metrics(self, timeout: float) -> dict[str, dict[str, Any] | None]:
        """Each host's metrics snapshot by name; None for a host that did not answer
        within ``timeout`` seconds (a slow or dead host must not hold up a scrape)."""
        names, hosts = list(self._names), list(self._hosts)

        async def one(host: ActorHandle) -> dict[str, Any] | None:
            try:
                return dict(await asyncio.wait_for(host.metrics.remote(), timeout))
            except Exception:  # a timeout, a dead or restarting actor
                log.debug("no metrics from a host within %ss", timeout, exc_info=True)
                return None

        answers = await asyncio.gather(*(one(host) for host in hosts))
        return dict(zip(names, answers, strict=True))

    async def supervisor_stats(self) -> dict[str, int]:
        if self._supervisor is None:
            return {}
        return dict(await self._supervisor.stats.remote())

    def shutdown(self) -> None:
        for actor in [*self._hosts, self._supervisor]:
            if actor is not None:
                ray.kill(actor)
        self._hosts, self._supervisor = [], None
