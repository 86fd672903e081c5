"""The SagaHost pool as seen from the API process: which host runs which execution.

Shared executions map to a host by rendezvous (highest-random-weight) hashing,
a form of consistent hashing: adding or losing one host moves only the
executions that hashed to it. Dedicated executions get an actor of their own,
named after the execution so any API process can find it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from coordinator.core import events as ev
from coordinator.core.definition import Placement as PlacementKind
from coordinator.hosts import DedicatedHost, HostConfig, SagaHost

log = logging.getLogger(__name__)


def rendezvous(key: str, hosts: Sequence[str]) -> int:
    """Index of the host with the highest hash weight for ``key``."""
    def weight(host: str) -> int:
        digest = hashlib.blake2b(f"{host}|{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    return max(range(len(hosts)), key=lambda index: weight(hosts[index]))


class HostPool:
    def __init__(self, config: HostConfig, size: int, namespace: str = "sagaray") -> None:
        if size < 1:
            raise ValueError(f"the host pool needs at least one host, not {size}")
        self._config = config
        self._size = size
        self._namespace = namespace
        self._names = [f"{namespace}-host-{index}" for index in range(size)]
        self._hosts: list[ActorHandle] = []

    @property
    def names(self) -> list[str]:
        return list(self._names)

    async def start(self) -> None:
        """Create (or attach to) the hosts and wait until each answers."""
        self._hosts = [
            SagaHost.options(  # type: ignore[attr-defined]
                name=name, namespace=self._namespace, get_if_exists=True,
                lifetime="detached", scheduling_strategy="SPREAD",
            ).remote(name, self._config)
            for name in self._names
        ]
        await asyncio.gather(*(host.stats.remote() for host in self._hosts))

    def host_for(self, execution_id: str) -> ActorHandle:
        return self._hosts[rendezvous(execution_id, self._names)]

    async def dispatch(
        self, placement: PlacementKind, execution_id: str, events: list[ev.Event] | None = None
    ) -> dict[str, str | None]:
        """Start (or resume) an execution on its host; returns where it runs."""
        if placement == "dedicated":
            actor = DedicatedHost.options(  # type: ignore[attr-defined]
                name=self._dedicated_name(execution_id), namespace=self._namespace,
                get_if_exists=True, lifetime="detached",
            ).remote(self._dedicated_name(execution_id), self._config)
            return dict(await actor.start.remote(execution_id, events))
        return dict(await self.host_for(execution_id).start.remote(execution_id, events))

    async def call(self, placement: PlacementKind, execution_id: str, method: str,
                   *args: Any) -> Any:
        """Call ``method`` on the actor that runs (or would run) the execution."""
        actor = await self._owner(placement, execution_id)
        try:
            return await getattr(actor, method).remote(execution_id, *args)
        except RayActorError:
            if placement != "dedicated":
                raise
            # The dedicated actor ended with its execution: a shared host can load it.
            return await getattr(self.host_for(execution_id), method).remote(execution_id, *args)

    async def _owner(self, placement: PlacementKind, execution_id: str) -> ActorHandle:
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

    def shutdown(self) -> None:
        for host in self._hosts:
            ray.kill(host)
        self._hosts = []
