"""The journal interface every store implements, and the records it returns.

Contract (checked by ``tests/journal/test_contract.py`` against every store):
- Events of one execution have gapless sequence numbers starting at 1, and
  ``(execution_id, seq)`` is unique: a second writer appending at a taken
  sequence gets :class:`SequenceConflict` and nothing of its batch is stored.
- ``create_execution`` writes the executions row and the first events in one
  transaction; with an idempotency key, a second create for the same
  ``(saga, key)`` stores nothing and returns the existing execution.
- An append returns only after its events are durable (fsynced).
- Every non-terminal execution may have an owner (a host id) holding a lease
  until ``lease_until``. Each ``claim`` increments the execution's ``fence``;
  an append that carries a fence other than the current one raises
  :class:`FencedOut` and stores nothing, so a host paused past its lease cannot
  write once another host (or its own restarted incarnation) claimed it.
- Payloads are JSON, never pickle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from coordinator.core.events import Event

log = logging.getLogger(__name__)

ExecutionStatus = Literal["running", "compensating", "completed", "compensated", "failed"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "compensated", "failed"})


class JournalError(Exception):
    """Base of every journal failure."""


class JournalUnavailable(JournalError):
    """The database cannot be reached now; callers may retry later (API: 503)."""


class SequenceConflict(JournalError):
    """Another writer appended at this sequence number first; the batch was not stored."""


class FencedOut(JournalError):
    """The writer's fencing token is stale: another host owns the execution now."""


@dataclass(frozen=True, slots=True)
class NewExecution:
    execution_id: str
    saga: str
    version: int
    created_at: float
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionRow:
    execution_id: str
    saga: str
    version: int
    status: ExecutionStatus
    created_at: float
    updated_at: float
    last_seq: int
    idempotency_key: str | None = None
    request_hash: str | None = None
    owner: str | None = None
    lease_until: float | None = None
    fence: int = 0


@dataclass(frozen=True, slots=True)
class CreateResult:
    """``created`` is False when the idempotency key already named ``row``."""

    row: ExecutionRow
    created: bool


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    event: Event

    def as_json_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, **self.event.model_dump(mode="json")}


@dataclass(frozen=True, slots=True)
class Page:
    items: list[ExecutionRow]
    next_cursor: str | None


class WriteObserver(Protocol):
    """Told by a journal's writer about each commit and each write request (metrics).

    Both stores take one with ``observe(observer)`` (not part of :class:`Journal`: a
    journal without metrics needs none). Called on the writer's own thread or task:
    implementations only count; an exception is logged and ignored.
    """

    def journal_committed(self, batch_size: int) -> None:
        """A transaction committed ``batch_size`` write requests together."""

    def journal_appended(self, seconds: float) -> None:
        """A write request (create or append) was durable ``seconds`` after it was made."""


def report_writes(observer: WriteObserver, submitted: Sequence[float]) -> None:
    """Tell ``observer`` of one commit of requests made at ``submitted`` (perf_counter).

    Its errors are logged, never raised: metrics must not stop a journal writer.
    """
    done = time.perf_counter()
    try:
        observer.journal_committed(len(submitted))
        for made_at in submitted:
            observer.journal_appended(done - made_at)
    except Exception:
        log.exception("journal write observer failed")


class Journal(Protocol):
    """Durable, append-only history of every execution."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create_execution(
        self,
        execution: NewExecution,
        events: Sequence[Event],
        owner: str | None = None,
        lease_until: float | None = None,
    ) -> CreateResult:
        """Create the execution; with ``owner`` (and ``lease_until``) it starts claimed, fence 1.

        ``owner`` and ``lease_until`` go together (ValueError otherwise). A create
        answered by an existing idempotency key leaves that execution's owner alone.
        """
        ...

    async def append(
        self,
        execution_id: str,
        after_seq: int,
        events: Sequence[Event],
        status: ExecutionStatus | None = None,
        fence: int | None = None,
    ) -> int:
        """Store ``events`` as ``after_seq + 1 ...``; set the row's status when given.

        Returns the new last sequence number. With ``fence``, the write happens only
        if it is still the execution's fence: otherwise :class:`FencedOut` (checked
        first, whatever the sequence). Raises :class:`SequenceConflict` when
        ``after_seq`` is no longer the last sequence of the execution. A terminal
        ``status`` also clears the owner and the lease.
        """
        ...

    async def claim(
        self, execution_id: str, owner: str, lease_until: float, now: float
    ) -> int | None:
        """Own a non-terminal execution that is unowned, expired or already ``owner``'s.

        Returns the new fence (incremented on every claim, even by the same owner,
        so that a restarted host fences out its former incarnation), or None when
        another owner's lease is live at ``now``, the execution is terminal or unknown.
        """
        ...

    async def renew(self, owner: str, fences: Mapping[str, int], lease_until: float) -> set[str]:
        """Extend to ``lease_until`` the leases ``owner`` still holds with these fences.

        One write for the whole mapping (execution id -> fence); returns the ids
        renewed. The others were claimed by someone else, released or ended.
        """
        ...

    async def release(self, execution_id: str, owner: str, fence: int) -> None:
        """Clear the owner and lease if ``owner`` still holds them with ``fence``."""
        ...

    async def expired(self, now: float, limit: int = 500) -> list[ExecutionRow]:
        """Non-terminal executions with no owner or a lease ended before ``now``.

        Unowned ones first, then by oldest lease (ties by creation, then id).
        """
        ...

    async def read(self, execution_id: str, after_seq: int = 0) -> list[StoredEvent]: ...

    async def get_execution(self, execution_id: str) -> ExecutionRow | None: ...

    async def list_executions(
        self,
        saga: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Newest first by ``created_at`` (ties by id); the cursor is opaque and stable."""
        ...

    async def non_terminal(self) -> list[ExecutionRow]:
        """Every execution not yet completed, compensated or failed (for resumption)."""
        ...

    async def live_counts(self) -> dict[str | None, int]:
        """How many executions are not terminal, by owner (None: unowned), in one query.

        Admission control reconciles its in-memory counts from this every second or so,
        so it reads counts only, never rows.
        """
        ...

    async def ping(self) -> None:
        """Raise :class:`JournalUnavailable` when the store does not answer."""
        ...


def initial_fence(owner: str | None, lease_until: float | None) -> int:
    """The fence of a new execution: 1 when created owned, as if claimed; checks the pair."""
    # An owner without a lease could never be taken over, and a lease without an owner
    # means nothing; the stores keep both NULL or both set, which expired() relies on.
    if (owner is None) != (lease_until is None):
        raise ValueError(
            f"owner and lease_until go together, got owner={owner!r}, lease_until={lease_until!r}"
        )
    return 0 if owner is None else 1


def append_refusal(
    execution_id: str, after_seq: int, fence: int | None, found: Sequence[Any] | None
) -> JournalError:
    """Why an append matched no row, given that row's ``(last_seq, fence)`` (None: no row)."""
    if found is None:
        return JournalError(f"unknown execution {execution_id}")
    last_seq, current = found
    # The fence first: a stale owner must stop for good, where a sequence conflict
    # only tells a current owner to read the history back.
    if fence is not None and current != fence:
        return FencedOut(
            f"execution {execution_id}: fence {fence} is stale, the execution's fence is"
            f" {current} (another owner claimed it)"
        )
    return SequenceConflict(
        f"execution {execution_id}: append after seq {after_seq}, but the last seq is {last_seq}"
    )
