"""Wakes the API's waiters (``?wait=``) when their execution stops on its host.

Contract of :class:`CompletionWatch`:
- Owns, in one API process, the table of waiting execution ids and one
  long-poll loop per SagaHost (:meth:`FinishFeed.since`), started on first use
  and kept running, so a finishing saga costs its waiter no Ray call.
- A wake-up is a hint to read the journal again: a waiter is woken when
  its execution stopped on the host watched (terminal, or moved to another
  host), and every waiter of a host is woken when that host's feed lost entries
  (restart, overflow) or cannot be reached. A waiter's future holds the
  execution's ``(last_seq, terminal view)`` when the host's feed carried one (no
  read needed; the waiter checks it is not older than what it waits on), else
  None. Waiters also re-read the journal on their own every few seconds, which
  covers executions that run elsewhere.
- :meth:`primed` returns once the host's loop holds a cursor: anything that
  finishes after that is seen, so a waiter checks the journal after priming.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)
POLL_SECONDS = 10.0
RETRY_SECONDS = 0.5
# How long past its own long-poll timeout a feed call may take before it counts as failed.
FEED_MARGIN_SECONDS = 5.0
# Fetches a host's feed: (host name, incarnation, cursor, timeout, reader) -> answer.
FeedCall = Callable[[str, str | None, int | None, float, str], Awaitable[dict[str, Any]]]
View = tuple[int, dict[str, Any]]  # (journal sequence, terminal view), as the feed sends it


class CompletionWatch:
    def __init__(self, fetch: FeedCall) -> None:
        self._fetch = fetch
        # Names this process to the hosts: views recorded for it come to its polls only.
        self.reader = uuid.uuid4().hex
        # host -> id -> one future per waiting request: a waiter that gives up
        # cancels its own future, never another request's.
        self._waiters: dict[str, dict[str, set[asyncio.Future[View | None]]]] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._primed: dict[str, asyncio.Event] = {}
        self._closed = False

    def waiter(self, host: str, execution_id: str) -> asyncio.Future[View | None]:
        """A new future, set when ``execution_id`` may have finished; the caller's own.

        Its result is ``(last_seq, view)`` the host sent along, or None (read the journal).
        """
        future: asyncio.Future[View | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(host, {}).setdefault(execution_id, set()).add(future)
        self._ensure_loop(host)
        return future

    def discard(self, host: str, execution_id: str, future: asyncio.Future[View | None]) -> None:
        """Forget one waiter's future (after it was woken or gave up)."""
        waiting = self._waiters.get(host, {})
        futures = waiting.get(execution_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del waiting[execution_id]
        if not future.done():
            future.cancel()

    def is_primed(self, host: str) -> bool:
        event = self._primed.get(host)
        return event is not None and event.is_set()

    async def primed(self, host: str) -> None:
        self._ensure_loop(host)
        primed = self._primed.setdefault(host, asyncio.Event())
        if self._closed:
            primed.set()  # nothing follows the feed any more: read the journal
        await primed.wait()

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._loops.values())
        self._loops.clear()
        while tasks:
            # Python 3.11's wait_for drops a cancel that lands as its inner call
            # completes: cancel again until every loop has really stopped.
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            tasks = list(pending)

    def _ensure_loop(self, host: str) -> None:
        if self._closed:
            return
        task = self._loops.get(host)
        if task is None or task.done():
            self._primed.setdefault(host, asyncio.Event())
            self._loops[host] = asyncio.get_running_loop().create_task(self._follow(host))

    async def _follow(self, host: str) -> None:
        incarnation: str | None = None
        cursor: int | None = None
        while not self._closed:
            try:
                # Bounded here too: a host that hangs must not hold its waiters.
                answer = await asyncio.wait_for(
                    self._fetch(host, incarnation, cursor, POLL_SECONDS, self.reader),
                    POLL_SECONDS + FEED_MARGIN_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.debug("finish feed of %s unavailable: %r", host, error)
                incarnation = cursor = None
                nobody = not self._waiters.get(host)
                # Waiters fall back to reading the journal each time they are woken.
                self._primed[host].set()
                self._wake_all(host)
                if nobody:
                    # Say the host left the pool: stop polling it; the next waiter
                    # restarts the loop and primes it again.
                    self._loops.pop(host, None)
                    self._primed.pop(host, None)
                    return
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if not answer["complete"]:
                self._wake_all(host)
            incarnation, cursor = answer["incarnation"], answer["cursor"]
            self._primed[host].set()
            self._wake(host, answer["ids"], answer.get("views") or {})

    def _wake(self, host: str, ids: list[str], views: dict[str, View]) -> None:
        waiting = self._waiters.get(host)
        if not waiting:
            return
        for execution_id in ids:
            _set_all(waiting.pop(execution_id, ()), views.get(execution_id))

    def _wake_all(self, host: str) -> None:
        for futures in self._waiters.pop(host, {}).values():
            _set_all(futures, None)


def _set_all(futures: Iterable[asyncio.Future[View | None]], view: View | None) -> None:
    for future in futures:
        if not future.done():
            future.set_result(view)
