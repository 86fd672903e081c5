"""The SagaHost actors of one pool: which exist, which take work, which are draining.

Contract of :class:`HostSet` (used only inside the supervisor actor):
- Owns the pool's membership. Hosts are named ``{namespace}-host-{i}``; the
  active ones are ``0 .. size-1``, so membership is one integer plus the hosts
  being drained (all above ``size``) and the hosts created but not yet
  answering (``pending``: on an autoscaled cluster, waiting for a node).
- Grows by creating the next index; a host joins the active set only once it
  answers, so no start waits behind a host that has no node yet. It does not
  grow onto an index that is still draining (that drain ends within seconds).
- Shrinks from the highest index: the host leaves the active set first (new
  work goes elsewhere), then is drained (``SagaHost.drain``: its runners stop at
  a safe point and release their leases), its executions are handed over by
  ``hand_over`` (the supervisor's sweep) after every drain step, and once it runs
  nothing it is killed.
- Rebuilt after a supervisor restart from the actors that exist: a host that
  says it is draining goes on draining, the others are active.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from coordinator.host_config import HostConfig
from coordinator.hosts import SagaHost
from coordinator.scaling import ScalePolicy

log = logging.getLogger(__name__)
# How long growing with ``wait`` waits for new hosts to answer before leaving them pending.
HOST_START_SECONDS = 60.0
# One drain call waits this long, then the executions released so far are handed over.
DRAIN_STEP_SECONDS = 0.5
HandOver = Callable[[], Awaitable[int]]
KEEP_DRAINED = 100  # drain records kept for stats


def host_name(namespace: str, index: int) -> str:
    return f"{namespace}-host-{index}"


@dataclass
class DrainRecord:
    """What one finished drain did, for stats and tests."""

    host: str
    seconds: float
    released: int  # executions it stopped and gave back
    refused: int  # starts it gave back (sent by API processes with a stale membership)


@dataclass
class HostSet:
    config: HostConfig
    namespace: str
    policy: ScalePolicy
    host_cpus: float = 0.0
    ping_timeout: float = 2.0
    size: int = 0
    handles: dict[str, Any] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    draining: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    drained: list[DrainRecord] = field(default_factory=list)

    def name(self, index: int) -> str:
        return host_name(self.namespace, index)

    def active(self) -> list[str]:
        return [self.name(index) for index in range(self.size)]

    def membership(self) -> dict[str, Any]:
        """What API processes cache: the active names, the draining ones, and handles."""
        active = self.active()
        return {"active": active, "draining": sorted(self.draining),
                "pending": sorted(self.pending),
                "handles": {name: self.handles[name]
                            for name in [*active, *self.draining] if name in self.handles}}

    async def rebuild(self, hand_over: HandOver) -> None:
        """Find the hosts that exist (after a supervisor restart), then ensure ``min``."""
        found = await asyncio.gather(*(self._probe(self.name(i))
                                       for i in range(self.policy.max_hosts)))
        for index, (handle, stats) in enumerate(found):
            if handle is None:
                continue
            name = self.name(index)
            self.handles[name] = handle
            if stats is not None and stats.get("draining"):
                self._start_drain(name, hand_over)
            else:
                self.pending.add(name)  # promoted in index order while they answer
        await self.grow(self.policy.min_hosts, wait=True)

    async def _probe(self, name: str) -> tuple[Any, dict[str, Any] | None]:
        handle = await self._probe_exists(name)
        if handle is None:
            return None, None
        return handle, await self.ping(handle)

    async def _probe_exists(self, name: str) -> Any:
        try:
            return await asyncio.to_thread(ray.get_actor, name, namespace=self.namespace)
        except ValueError:
            return None

    async def ping(self, handle: Any) -> dict[str, Any] | None:
        try:
            return dict(await asyncio.wait_for(handle.stats.remote(), self.ping_timeout))
        except (RayActorError, GetTimeoutError, TimeoutError):
            return None

    async def grow(self, target: int, *, wait: bool = False) -> None:
        """Create hosts up to index ``target - 1``; ``wait``: until each answers."""
        target = min(target, self.policy.max_hosts)
        for index in range(self.size, target):
            name = self.name(index)
            if name in self.draining:
                break  # the index is still draining; grow once it is gone
            if name not in self.handles:
                self.handles[name] = self._create(name)
                self.pending.add(name)
        if wait:
            waiting = [self.handles[self.name(i)] for i in range(self.size, target)
                       if self.name(i) in self.handles]
            # Bounded: a host with no room (an autoscaler still adding nodes) stays
            # pending and joins at a later promote(), instead of holding up membership.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(
                    *(handle.stats.remote() for handle in waiting), return_exceptions=True),
                    HOST_START_SECONDS)
        await self.promote()

    def _create(self, name: str) -> Any:
        log.info("creating SagaHost %s", name)
        return SagaHost.options(  # type: ignore[attr-defined]
            name=name, namespace=self.namespace, get_if_exists=True, lifetime="detached",
            scheduling_strategy="SPREAD", num_cpus=self.host_cpus,
        ).remote(name, self.config)

    async def promote(self) -> None:
        """Move answering pending hosts into the active set, in index order."""
        while self.name(self.size) in self.pending:
            handle = self.handles[self.name(self.size)]
            if await self.ping(handle) is None:
                return
            self.pending.discard(self.name(self.size))
            self.size += 1
            log.info("SagaHost %s joined the pool (%d active)", self.name(self.size - 1),
                     self.size)

    def shrink(self, target: int, hand_over: HandOver) -> None:
        """Drop pending hosts above ``target``, then drain active ones from the top."""
        target = max(target, self.policy.min_hosts)
        for name in sorted(self.pending):
            if int(name.rsplit("-", 1)[1]) >= target:
                self.pending.discard(name)
                with contextlib.suppress(Exception):
                    ray.kill(self.handles.pop(name))
        while self.size > target:
            self.size -= 1
            self._start_drain(self.name(self.size), hand_over)

    def _start_drain(self, name: str, hand_over: HandOver) -> None:
        if name not in self.draining:
            task = asyncio.get_running_loop().create_task(self._drain(name, hand_over))
            self.draining[name] = task

    async def _drain(self, name: str, hand_over: HandOver) -> None:
        started = time.monotonic()
        handle = self.handles[name]
        released = refused = 0
        while True:
            try:
                left = await handle.drain.remote(DRAIN_STEP_SECONDS)
                stats = await self.ping(handle)
                if stats is not None:
                    released, refused = int(stats["released"]), int(stats["refused"])
            except RayActorError:
                if await self._probe_exists(name) is None:
                    break  # gone for good: whatever it held expires and is swept
                left = -1  # restarting: it takes back its executions, then drains again
            try:
                await hand_over()
            except Exception:
                log.exception("hand-over during the drain of %s failed; retrying", name)
            if left == 0:
                break
            if left < 0:
                await asyncio.sleep(DRAIN_STEP_SECONDS)
        with contextlib.suppress(Exception):
            ray.kill(handle)
        self.handles.pop(name, None)
        self.draining.pop(name, None)
        record = DrainRecord(name, time.monotonic() - started, released, refused)
        self.drained = [*self.drained[-(KEEP_DRAINED - 1):], record]
        log.info("SagaHost %s drained in %.2f s (%d executions handed over)",
                 name, record.seconds, released)

    async def loads(self) -> dict[str, dict[str, Any]]:
        """``stats()`` of every active and draining host that answers now."""
        names = [*self.active(), *self.draining]
        found = await asyncio.gather(*(self.ping(self.handles[name]) for name in names
                                       if name in self.handles))
        return {str(stats["host"]): stats for stats in found if stats is not None}

    def close(self) -> None:
        for task in self.draining.values():
            task.cancel()
