"""The Ray actors that carry a :class:`~coordinator.host_core.HostCore`.

``SagaHost`` (shared placement) runs many executions; ``DedicatedHost`` runs one
and exits when it ends. Both are async Ray actors wrapping a ``HostCore``.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import Any

import ray

from coordinator.core import events as ev
from coordinator.gc_tuning import relax_gc
from coordinator.host_config import HostConfig
from coordinator.host_core import Answer, HostCore
from coordinator.host_link import LinkServer
from coordinator.link_codec import host_handlers
from coordinator.telemetry import adopt_otel_env

log = logging.getLogger(__name__)
__all__ = ["DedicatedHost", "HostConfig", "HostCore", "SagaHost"]


def _restarted() -> bool:
    """True in an actor that Ray restarted after its process died."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's own property warns about its internals
            return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:
        return False


def _node_ip() -> str:
    """The address other nodes reach this one at (loopback outside a cluster)."""
    try:
        return str(ray.util.get_node_ip_address())
    except Exception:
        return "127.0.0.1"


def _node_id() -> str | None:
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # outside Ray (unit tests of the core host)
        return None


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=10_000)
class SagaHost:
    """A long-lived async actor running many executions (``placement: shared``).

    Created, drained and stopped by the supervisor (``coordinator/supervisor.py``);
    ``drain`` is idempotent and may be called again after a restart. With
    ``HostConfig.host_link`` it also serves ``start_many`` and ``finished_since`` on
    its direct link (``coordinator/host_link.py``), named in its Ray answers.
    """

    def __init__(self, host_id: str, config: HostConfig) -> None:
        adopt_otel_env(config.otel_env)
        self.core = HostCore(host_id, config, _node_id())
        relax_gc()  # this process is this actor's alone, for its whole life
        self._recovery: asyncio.Task[int] | None = None
        # Ray runs an async actor's __init__ on its event loop.
        loop = asyncio.get_running_loop()
        if _restarted():
            self._recovery = loop.create_task(self.core.recover())
        self._link = LinkServer(host_handlers(self.core)) if config.host_link else None
        self._listening: asyncio.Task[str] | None = None
        if self._link is not None:
            self._listening = loop.create_task(self._link.start(_node_ip()))

    async def start(self, execution_id: str, events: list[ev.Event] | None = None) -> Answer:
        return await self.core.start(execution_id, events)

    async def start_many(
        self, batch: list[tuple[str, list[ev.Event] | None, int | None, str | None]]
    ) -> list[Answer]:
        """As :meth:`HostCore.start_many`; each answer also names this host's link
        (``link``, ``link_key``) once it listens, for the caller's next calls."""
        answers = await self.core.start_many(batch)
        if self._link is not None and self._link.address is not None:
            for answer in answers:
                answer["link"], answer["link_key"] = self._link.address, self._link.key
        return answers

    async def finished_since(self, incarnation: str | None, cursor: int | None,
                             timeout: float, reader: str | None = None) -> dict[str, Any]:
        return await self.core.finishes.since(incarnation, cursor, timeout, reader)

    async def cancel(self, execution_id: str, reason: str | None) -> str:
        return await self.core.cancel(execution_id, reason)

    async def resume(self, execution_id: str) -> str:
        return await self.core.resume(execution_id)

    async def wait(self, execution_id: str, timeout: float | None) -> bool:
        return await self.core.wait(execution_id, timeout)

    async def stats(self) -> dict[str, Any]:
        """The core's counters, and the link's address and calls served (never its key)."""
        link = None if self._link is None else {"address": self._link.address,
                                                 "calls": self._link.served}
        return {**self.core.stats(), "link": link}

    async def traffic(self) -> dict[str, Any]:
        """``HttpInvoker.traffic_snapshot()`` of this host (instances, bulkheads)."""
        return self.core.traffic_snapshot()

    async def metrics(self) -> dict[str, Any]:
        """A snapshot of this host's metrics (plain data), for the API's /metrics."""
        return await self.core.metrics_snapshot()

    async def drain(self, wait: float) -> int:
        return await self.core.drain(wait)


@ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1_000)
class DedicatedHost:
    """One execution in its own actor (``placement: dedicated``); exits when it ends."""

    def __init__(self, host_id: str, config: HostConfig) -> None:
        adopt_otel_env(config.otel_env)
        self.core = HostCore(host_id, config, _node_id())

    async def start(self, execution_id: str, events: list[ev.Event] | None = None) -> Answer:
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
