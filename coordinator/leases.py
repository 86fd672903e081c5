"""Ownership of executions: claiming, renewing and losing leases.

Contract of :class:`LeaseKeeper` (one per host):
- Owns the fencing tokens of the executions its host runs. A token is obtained
  by ``claim`` and passed with every journal append; a stale token is refused
  by the journal, so a host that was paused past its lease cannot write.
- Renews every held lease in one journal call each ``lease / 3`` seconds. An
  execution whose lease could not be renewed (another host claimed it) is
  reported through ``on_lost`` so the host stops its runner.
- Retries a failed renewal at the next tick; a journal that stays unreachable
  longer than the lease lets other hosts take over, which is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from coordinator.journal.base import Journal, JournalError

log = logging.getLogger(__name__)
DEFAULT_LEASE_SECONDS = 10.0


class LeaseKeeper:
    def __init__(
        self,
        journal: Journal,
        owner: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        on_lost: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._journal = journal
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._on_lost = on_lost
        self._clock = clock
        self.fences: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def claim(self, execution_id: str) -> int | None:
        """Take the execution (fencing out any former owner); its token, or None."""
        now = self._clock()
        fence = await self._journal.claim(execution_id, self.owner, now + self.lease_seconds, now)
        if fence is not None:
            self.fences[execution_id] = fence
            self._ensure_running()
        return fence

    def adopt(self, execution_id: str, fence: int) -> None:
        """Hold a lease the journal gave this host at creation, as if claimed."""
        self.fences[execution_id] = fence
        self._ensure_running()

    def forget(self, execution_id: str) -> None:
        self.fences.pop(execution_id, None)

    async def release(self, execution_id: str) -> None:
        fence = self.fences.pop(execution_id, None)
        if fence is not None:
            with contextlib.suppress(JournalError):
                await self._journal.release(execution_id, self.owner, fence)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._renew_forever())

    async def renew_once(self) -> set[str]:
        held = dict(self.fences)
        if not held:
            return set()
        renewed = await self._journal.renew(self.owner, held,
                                            self._clock() + self.lease_seconds)
        for execution_id in held.keys() - renewed:
            if self.fences.get(execution_id) == held[execution_id]:
                log.warning("%s lost the lease of %s", self.owner, execution_id)
                self.fences.pop(execution_id, None)
                if self._on_lost is not None:
                    self._on_lost(execution_id)
        return renewed

    async def _renew_forever(self) -> None:
        while self.fences:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew_once()
            except JournalError as error:
                log.warning("lease renewal by %s failed: %s", self.owner, error)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
