"""Batched hand-over of executions from an API process to one SagaHost.

Contract of :class:`HandOverQueue`:
- Owns the executions this API process has journaled but not yet handed to one
  host. At most one ``start_many`` call per host is in flight; whatever queues
  meanwhile goes in the next call (group commit, applied to Ray calls), so a
  burst of starts costs a few actor calls instead of one each.
- Retries nothing: a failed call fails every future of its batch. The journal
  already holds those executions, and the supervisor hands out any whose host
  never claimed them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from coordinator.core import events as ev

# (execution id, its first events or None, the fence of a lease it was created with,
# the reader that waits for its end, whose polls of the finish feed then get its view)
Item = tuple[str, Sequence[ev.Event] | None, int | None, str | None]
StartMany = Callable[[list[Item]], Awaitable[list[dict[str, Any]]]]
MAX_BATCH = 512


class HandOverQueue:
    def __init__(self, start_many: StartMany) -> None:
        self._start_many = start_many
        self._items: list[tuple[Item, asyncio.Future[dict[str, Any]]]] = []
        self._draining: asyncio.Task[None] | None = None

    def put(self, execution_id: str, events: Sequence[ev.Event] | None,
            fence: int | None = None,
            report_to: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """Queue one execution; the future gets the host's answer for it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._items.append(((execution_id, events, fence, report_to), future))
        if self._draining is None or self._draining.done():
            self._draining = loop.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        while self._items:
            batch, self._items = self._items[:MAX_BATCH], self._items[MAX_BATCH:]
            try:
                answers = await self._start_many([item for item, _ in batch])
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(dict(answer))
