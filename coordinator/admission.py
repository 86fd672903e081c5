"""Admission control: a bounded number of executions in flight, per host and in total.

Contract of :class:`Admission`:
- Owns in-memory counts of the non-terminal executions, in total and per shared host,
  kept by the API process. ``reserve`` is O(1) on the start path (a few dict reads and
  increments, no I/O); it either counts the start or raises :class:`TooManyRequests`
  before anything is written, so a refused start leaves no journal row.
- The counts are rebuilt from the journal (``Journal.live_counts``) every ``interval``
  seconds by ``run``: between two refreshes, starts are added at once and ends are
  seen at the next refresh, so the counts err towards full (a refused start is safe,
  the caller retries after ``Retry-After``). Several API processes each refresh from
  the one journal, so each sees the others' executions within one interval.
- A shared execution counts against the host its id hashes to (rendezvous, as the pool
  places it). Without a caller-chosen id, ``reserve`` draws ids until one hashes to a
  host with room, so one full host does not refuse starts others could take.
- Each admitted start is settled once: ``confirm`` when its row is written (the journal
  counts it from then on), ``release`` when nothing was written. A refresh adds the
  starts not yet written and those written while it read the journal, so a start in
  progress during a refresh is never missed (at worst counted twice until the next).
- Retries nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from coordinator.errors import TooManyRequests

log = logging.getLogger(__name__)
DEFAULT_MAX_IN_FLIGHT = 20_000
DEFAULT_MAX_IN_FLIGHT_PER_HOST = 10_000
REFRESH_SECONDS = 1.0
LiveCounts = Callable[[], Awaitable[dict[str | None, int]]]


@dataclass(frozen=True)
class AdmissionLimits:
    total: int = DEFAULT_MAX_IN_FLIGHT
    per_host: int = DEFAULT_MAX_IN_FLIGHT_PER_HOST

    def __post_init__(self) -> None:
        if self.total < 1 or self.per_host < 1:
            raise ValueError(f"in-flight limits must be at least 1, got total={self.total}, "
                             f"per_host={self.per_host}")


@dataclass(slots=True)
class Ticket:
    """One admitted start: the id to create it under and its host (None: dedicated).

    Settled exactly once: ``confirm`` once its row is written, ``release`` if not.
    """

    execution_id: str
    host: str | None
    settled: bool = False


class Admission:
    def __init__(self, limits: AdmissionLimits, hosts: Callable[[], Sequence[str]],
                 host_of: Callable[[str], str], live_counts: LiveCounts,
                 interval: float = REFRESH_SECONDS) -> None:
        self.limits = limits
        self._hosts = hosts
        self._host_of = host_of
        self._live_counts = live_counts
        self.interval = interval
        self.total = 0
        self.by_host: dict[str, int] = {}
        self.refused = {"total": 0, "host": 0}
        # Admitted starts whose row is not written yet: no journal count holds them.
        self._pending: dict[str | None, int] = {}
        # Rows written while a refresh reads the journal: it may or may not see them.
        self._written_meanwhile: dict[str | None, int] | None = None

    def reserve(self, shared: bool, execution_id: str | None = None) -> Ticket:
        """Count one start, or raise :class:`TooManyRequests` (nothing counted)."""
        if self.total >= self.limits.total:
            self._refuse("total", self.total, self.limits.total)
        host: str | None = None
        if shared:
            execution_id, host = self._place(execution_id)
        ticket = Ticket(execution_id or uuid.uuid4().hex, host)
        self._add(host, 1)
        _bump(self._pending, host, 1)
        return ticket

    def confirm(self, ticket: Ticket) -> None:
        """The start's row is written: from now on the journal counts it."""
        if ticket.settled:
            return
        ticket.settled = True
        _bump(self._pending, ticket.host, -1)
        if self._written_meanwhile is not None:
            _bump(self._written_meanwhile, ticket.host, 1)

    def release(self, ticket: Ticket) -> None:
        """Uncount a start that wrote nothing (a repeated idempotency key, an error)."""
        if ticket.settled:
            return
        ticket.settled = True
        _bump(self._pending, ticket.host, -1)
        self._add(ticket.host, -1)

    def _place(self, execution_id: str | None) -> tuple[str, str]:
        limit = self.limits.per_host
        if execution_id is not None:
            host = self._host_of(execution_id)
            if self.by_host.get(host, 0) >= limit:
                self._refuse("host", self.by_host.get(host, 0), limit)
            return execution_id, host
        hosts = self._hosts()
        if all(self.by_host.get(name, 0) >= limit for name in hosts):
            self._refuse("host", min(self.by_host.get(n, 0) for n in hosts), limit)
        # The hosts with room take the start: draw ids until one hashes there (each draw
        # hits one with probability rooms/hosts, so 8 per host all but never run out).
        for _ in range(8 * len(hosts)):
            candidate = uuid.uuid4().hex
            host = self._host_of(candidate)
            if self.by_host.get(host, 0) < limit:
                return candidate, host
        self._refuse("host", limit, limit)
        raise AssertionError("unreachable")

    def _refuse(self, scope: str, count: int, limit: int) -> None:
        self.refused[scope] += 1
        flag = "--max-in-flight" if scope == "total" else "--max-in-flight-per-host"
        where = "in total" if scope == "total" else "on every host with room for it"
        raise TooManyRequests(
            f"too many executions in flight {where}: {count}, the limit is {limit} ({flag}); "
            f"retry after {self.retry_after:g} s", retry_after=self.retry_after,
            in_flight=count, limit=limit, scope=scope)

    @property
    def retry_after(self) -> float:
        # Room is seen at the next refresh at the latest.
        return float(max(1, math.ceil(self.interval)))

    def _add(self, host: str | None, delta: int) -> None:
        self.total += delta
        if host is not None:
            self.by_host[host] = self.by_host.get(host, 0) + delta

    async def refresh(self) -> None:
        """Rebuild the counts: the journal's, plus the starts not yet written, plus those
        written while the journal was read (counted twice at worst, never missed)."""
        meanwhile: dict[str | None, int] = {}
        self._written_meanwhile = meanwhile
        try:
            counts = await self._live_counts()
        finally:
            self._written_meanwhile = None
        names = set(self._hosts())
        by_host = {owner: n for owner, n in counts.items() if owner in names}
        extra = Counter(self._pending) + Counter(meanwhile)
        for host, n in extra.items():
            if host is not None:
                by_host[host] = by_host.get(host, 0) + n
        self.by_host = by_host
        self.total = sum(counts.values()) + sum(extra.values())

    async def run(self) -> None:
        """Refresh every ``interval`` seconds until cancelled; a failed refresh keeps the
        counts as they are (they only grow meanwhile, so admission errs towards full)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:
                log.warning("admission: could not refresh the in-flight counts", exc_info=True)


def _bump(counts: dict[str | None, int], host: str | None, delta: int) -> None:
    counts[host] = counts.get(host, 0) + delta


async def stop(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
