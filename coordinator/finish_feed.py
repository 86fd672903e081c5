"""A host's record of the executions that stopped running on it, for waiters elsewhere.

Contract of :class:`FinishFeed`:
- Owns an in-memory, bounded, ordered log of execution ids, one entry each time a
  runner on this host stops (terminal, fenced out or abandoned). Nothing in it is
  durable: the journal is the truth, the feed only says "look again".
- ``since`` is a long poll: it answers at once when entries exist past the
  caller's cursor, otherwise when one arrives or ``timeout`` passes. One call
  serves every waiter of an API process, so a finishing saga costs no Ray call
  of its own.
- An answer with ``complete: False`` means entries were lost to the caller
  (the log wrapped, or the host restarted and its ``incarnation`` changed): the
  caller must re-check its waiters in the journal.
- An entry may carry the execution's terminal view and the journal sequence it
  reflects (``views`` in the answer: id -> ``(last_seq, view)``), for starts whose
  caller waits (``?wait``): that caller answers without reading and replaying the
  journal. A view is for one reader (the API process whose request waits): it goes
  only to that reader's poll, once (so memory holds only views not yet sent, however
  large the inputs), and at most the last ``keep_views`` are held. A caller must
  ignore a view older than the state it waits on (an execution resumed after it
  ended runs again); a caller that gets an entry without its view reads the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from itertools import islice
from typing import Any

DEFAULT_KEEP = 50_000
# Views wait here only until the next answer (milliseconds while an API polls);
# the cap bounds a host that nobody polls any more.
DEFAULT_KEEP_VIEWS = 1_024
Final = tuple[int, dict[str, Any]]  # (journal sequence of the terminal state, its view)


class FinishFeed:
    def __init__(self, keep: int = DEFAULT_KEEP, keep_views: int = DEFAULT_KEEP_VIEWS) -> None:
        self.incarnation = uuid.uuid4().hex
        self._ids: deque[str] = deque(maxlen=keep)
        self._views: dict[str, tuple[str, Final]] = {}  # id -> (reader, final), oldest first
        self._keep_views = keep_views
        self._next = 0  # the cursor of the next entry
        self._arrived = asyncio.Event()

    def record(self, execution_id: str, final: Final | None = None,
               reader: str | None = None) -> None:
        """Note that ``execution_id`` stopped here; ``final`` is ``(last_seq, view)`` of
        its terminal state, for ``reader``, when a waiter there asked for it."""
        self._ids.append(execution_id)
        self._next += 1
        self._views.pop(execution_id, None)  # an earlier run's, now stale
        if final is not None and reader is not None:
            self._views[execution_id] = (reader, final)
            if len(self._views) > self._keep_views:
                del self._views[next(iter(self._views))]
        # Wake every poll waiting now; later polls wait on a fresh event.
        self._arrived.set()
        self._arrived = asyncio.Event()

    async def since(self, incarnation: str | None, cursor: int | None,
                    timeout: float, reader: str | None = None) -> dict[str, Any]:
        """``{"incarnation", "cursor", "ids", "complete", "views"}`` past ``cursor``;
        ``views`` holds the entries' views recorded for ``reader``.

        Without a cursor (or with another incarnation's), it answers the current
        cursor at once, with ``complete`` False unless the caller had none.
        """
        if cursor is None or incarnation != self.incarnation:
            return self._answer([], complete=cursor is None, reader=reader)
        if cursor >= self._next:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        first = self._next - len(self._ids)
        ids = list(islice(self._ids, max(cursor - first, 0), None))
        return self._answer(ids, complete=cursor >= first, reader=reader)

    def _answer(self, ids: list[str], *, complete: bool, reader: str | None) -> dict[str, Any]:
        views: dict[str, Final] = {}
        if self._views and reader is not None:
            for execution_id in ids:
                held = self._views.get(execution_id)
                if held is not None and held[0] == reader:
                    views[execution_id] = self._views.pop(execution_id)[1]
        return {"incarnation": self.incarnation, "cursor": self._next, "ids": ids,
                "complete": complete, "views": views}
