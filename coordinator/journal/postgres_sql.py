"""The SQL of the PostgreSQL journal's writes, and the row type it reads back.

Each function runs on the writer's connection, inside the transaction of a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from coordinator.core.events import Event, event_to_json
from coordinator.journal.base import (
    CreateResult,
    ExecutionRow,
    ExecutionStatus,
    JournalError,
    NewExecution,
    SequenceConflict,
)

# The events of a request as columns: sent as arrays and expanded with unnest(), so
# that a whole append is one statement (one round trip) however many events it has.
EventColumns = tuple[list[int], list[str], list[float], list[str]]

ROW_COLUMNS = (
    "execution_id, saga, version, status, created_at, updated_at, last_seq,"
    " idempotency_key, request_hash, owner"
)


def _unnest_events(first: int) -> str:
    """The events of a request, sent as four array parameters from ``$first`` on, as rows."""
    seq, type_, at, data = (f"${first + i}" for i in range(4))
    return (
        f"unnest({seq}::bigint[], {type_}::text[], {at}::float8[], {data}::text[])"
        " AS e(seq, type, at, data)"
    )


# The WHERE on last_seq is the sequence check: a concurrent writer of the same row
# (any connection, any process) waits for our row lock, then re-checks against the
# committed last_seq, so two writers can never both extend the same seq. Events are
# only inserted when the row moved.
_APPEND = f"""
WITH moved AS (
    UPDATE executions SET last_seq = $3, updated_at = $4, status = coalesce($5, status)
    WHERE execution_id = $1 AND last_seq = $2
    RETURNING execution_id
), stored AS (
    INSERT INTO events (execution_id, seq, type, at, data)
    SELECT moved.execution_id, e.seq, e.type, e.at, e.data
    FROM moved, {_unnest_events(6)}
)
SELECT count(*) FROM moved
"""

# ON CONFLICT without a target covers both the primary key and the idempotency
# index: a taken key stores nothing (the caller then reads the existing row back),
# and a concurrent create with the same key waits for the other to commit first.
_CREATE = f"""
WITH made AS (
    INSERT INTO executions (execution_id, saga, version, status, created_at, updated_at,
                            last_seq, idempotency_key, request_hash)
    VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8)
    ON CONFLICT DO NOTHING
    RETURNING execution_id
), stored AS (
    INSERT INTO events (execution_id, seq, type, at, data)
    SELECT made.execution_id, e.seq, e.type, e.at, e.data
    FROM made, {_unnest_events(9)}
)
SELECT count(*) FROM made
"""


def event_columns(after_seq: int, events: Sequence[Event]) -> EventColumns:
    # Serialized on the caller's side so the writer holds its row locks for less time.
    return (
        list(range(after_seq + 1, after_seq + len(events) + 1)),
        [event.type for event in events],
        [event.at for event in events],
        [event_to_json(event) for event in events],
    )


async def create(
    conn: Any, ex: NewExecution, columns: EventColumns, updated_at: float
) -> CreateResult:
    row = ExecutionRow(
        execution_id=ex.execution_id,
        saga=ex.saga,
        version=ex.version,
        status="running",
        created_at=ex.created_at,
        updated_at=updated_at,
        last_seq=len(columns[0]),
        idempotency_key=ex.idempotency_key,
        request_hash=ex.request_hash,
    )
    made = await conn.fetchval(
        _CREATE,
        ex.execution_id,
        ex.saga,
        ex.version,
        ex.created_at,
        updated_at,
        row.last_seq,
        ex.idempotency_key,
        ex.request_hash,
        *columns,
    )
    if made:
        return CreateResult(row, created=True)
    if ex.idempotency_key is not None:
        found = await conn.fetchrow(
            f"SELECT {ROW_COLUMNS} FROM executions WHERE saga = $1 AND idempotency_key = $2",
            ex.saga,
            ex.idempotency_key,
        )
        if found is not None:
            return CreateResult(to_row(found), created=False)
    raise SequenceConflict(f"execution {ex.execution_id} already exists")


async def append(
    conn: Any,
    execution_id: str,
    after_seq: int,
    columns: EventColumns,
    status: ExecutionStatus | None,
    updated_at: float,
) -> int:
    last_seq = after_seq + len(columns[0])
    moved = await conn.fetchval(
        _APPEND, execution_id, after_seq, last_seq, updated_at, status, *columns
    )
    if moved:
        return last_seq
    found = await conn.fetchval(
        "SELECT last_seq FROM executions WHERE execution_id = $1", execution_id
    )
    if found is None:
        raise JournalError(f"unknown execution {execution_id}")
    raise SequenceConflict(
        f"execution {execution_id}: append after seq {after_seq}, but the last seq is {found}"
    )


def to_row(r: Any) -> ExecutionRow:
    return ExecutionRow(
        execution_id=r[0],
        saga=r[1],
        version=r[2],
        status=cast(ExecutionStatus, r[3]),
        created_at=r[4],
        updated_at=r[5],
        last_seq=r[6],
        idempotency_key=r[7],
        request_hash=r[8],
        owner=r[9],
    )
