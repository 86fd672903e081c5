"""The journal interface every store implements, and the records it returns.

Contract (checked by ``tests/journal/test_contract.py`` against every store):
- Events of one execution have gapless sequence numbers starting at 1, and
  ``(execution_id, seq)`` is unique: a second writer appending at a taken
  sequence gets :class:`SequenceConflict` and nothing of its batch is stored.
- ``create_execution`` writes the executions row and the first events in one
  transaction; with an idempotency key, a second create for the same
  ``(saga, key)`` stores nothing and returns the existing execution.
- An append returns only after its events are durable (fsynced).
- Payloads are JSON, never pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from coordinator.core.events import Event

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


class Journal(Protocol):
    """Durable, append-only history of every execution."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create_execution(
        self, execution: NewExecution, events: Sequence[Event]
    ) -> CreateResult: ...

    async def append(
        self,
        execution_id: str,
        after_seq: int,
        events: Sequence[Event],
        status: ExecutionStatus | None = None,
    ) -> int:
        """Store ``events`` as ``after_seq + 1 ...``; set the row's status when given.

        Returns the new last sequence number. Raises :class:`SequenceConflict`
        when ``after_seq`` is no longer the last sequence of the execution.
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

    async def ping(self) -> None:
        """Raise :class:`JournalUnavailable` when the store does not answer."""
        ...
