"""A per-service concurrency limit with a bounded, timed waiting queue.

Contract: at most ``limit`` attempts to the service are in flight on this host;
up to ``queue_size`` more wait (first come, first served) for at most
``queue_timeout`` seconds; any other attempt is refused at once. A refused or
timed-out attempt was never sent, so the caller reports it as retryable. A slot
freed by :meth:`release` passes straight to the oldest waiter, so a newcomer
cannot overtake the queue. Single event loop, no locks: every change happens
between awaits.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Bulkhead:
    def __init__(self, limit: int, queue_size: int, queue_timeout: float) -> None:
        self.limit, self.queue_size, self.queue_timeout = limit, queue_size, queue_timeout
        self.active = 0
        self.rejected = 0  # refused because the queue was full or the wait timed out
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> bool:
        """True with a slot held (give it back with :meth:`release`); False if refused."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return True
        if len(self._waiters) >= self.queue_size:
            self.rejected += 1
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.queue_timeout)
            return True  # release() handed its slot over: active already counts it
        except TimeoutError:
            return self._give_up(waiter, count=True)
        except asyncio.CancelledError:
            self._give_up(waiter, count=False)
            raise

    def _give_up(self, waiter: asyncio.Future[None], *, count: bool) -> bool:
        if waiter.done() and not waiter.cancelled():
            # The slot arrived just as the wait ended: keep it if we may, else pass it on.
            if count:
                return True
            self.release()
            return False
        waiter.cancel()
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if count:
            self.rejected += 1
        return False

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; active unchanged
                return
        self.active -= 1
