"""The SQL of the PostgreSQL journal's writes, and the row type it reads back.

Each function runs on the writer's connection, inside the transaction of a batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast, get_args

from coordinator.core.events import Event, event_to_json
from coordinator.journal.base import (
    TERMINAL_STATUSES,
    CreateResult,
    ExecutionRow,
    ExecutionStatus,
    NewExecution,
    SequenceConflict,
    append_refusal,
)

# The events of a request as columns: sent as arrays and expanded with unnest(), so
# that a whole append is one statement (one round trip) however many events it has.
EventColumns = tuple[list[int], list[str], list[float], list[str]]

ROW_COLUMNS = (
    "execution_id, saga, version, status, created_at, updated_at, last_seq,"
    " idempotency_key, request_hash, owner, lease_until, fence"
)
# Listed positively (not NOT IN terminal) so that the indexes find the few live
# executions instead of scanning every finished one; the partial index
# executions_lease (migration 2) is only used by queries whose WHERE implies its own.
LIVE = ", ".join(f"'{s}'" for s in sorted(set(get_args(ExecutionStatus)) - TERMINAL_STATUSES))


def _unnest_events(first: int) -> str:
    """The events of a request, sent as four array parameters from ``$first`` on, as rows."""
    seq, type_, at, data = (f"${first + i}" for i in range(4))
    return (
        f"unnest({seq}::bigint[], {type_}::text[], {at}::float8[], {data}::text[])"
        " AS e(seq, type, at, data)"
    )


# The WHERE on last_seq (and fence) is the check: a concurrent writer of the same row
# (any connection, any process) waits for our row lock, then re-checks against the
# committed last_seq and fence, so two writers can never both extend the same seq, and
# a fenced-out owner cannot slip in after another host's claim. Events are only
# inserted when the row moved. An ended execution needs no owner: $11 clears it.
_APPEND = f"""
WITH moved AS (
    UPDATE executions SET last_seq = $3, updated_at = $4, status = coalesce($5, status),
        owner = CASE WHEN $11::boolean THEN NULL ELSE owner END,
        lease_until = CASE WHEN $11::boolean THEN NULL ELSE lease_until END
    WHERE execution_id = $1 AND last_seq = $2 AND ($10::bigint IS NULL OR fence = $10)
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
                            last_seq, idempotency_key, request_hash, owner, lease_until, fence)
    VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8, $13, $14, $15)
    ON CONFLICT DO NOTHING
    RETURNING execution_id
), stored AS (
    INSERT INTO events (execution_id, seq, type, at, data)
    SELECT made.execution_id, e.seq, e.type, e.at, e.data
    FROM made, {_unnest_events(9)}
)
SELECT count(*) FROM made
"""

# A restarted owner re-claims its own executions: the fence goes up all the same, so
# that appends of its former incarnation (still in flight somewhere) are refused. A
# concurrent claim of the same row waits for our row lock, then re-checks the WHERE
# against our committed owner and lease, so of several claimers one wins.
_CLAIM = f"""
UPDATE executions SET owner = $2, lease_until = $3, fence = fence + 1
WHERE execution_id = $1 AND status IN ({LIVE})
  AND (owner IS NULL OR lease_until IS NULL OR lease_until < $4 OR owner = $2)
RETURNING fence
"""

# The held leases come as two arrays, so a renewal of thousands is one statement.
_RENEW = f"""
UPDATE executions AS e SET lease_until = $2
FROM unnest($3::text[], $4::bigint[]) AS held(execution_id, fence)
WHERE e.execution_id = held.execution_id AND e.fence = held.fence
  AND e.owner = $1 AND e.status IN ({LIVE})
RETURNING e.execution_id
"""

_RELEASE = (
    "UPDATE executions SET owner = NULL, lease_until = NULL"
    " WHERE execution_id = $1 AND owner = $2 AND fence = $3"
)

EXPIRED = f"""
SELECT {ROW_COLUMNS} FROM executions
WHERE status IN ({LIVE}) AND (owner IS NULL OR lease_until IS NULL OR lease_until < $1)
ORDER BY lease_until NULLS FIRST, created_at, execution_id
LIMIT $2
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
    conn: Any,
    ex: NewExecution,
    columns: EventColumns,
    updated_at: float,
    owner: str | None,
    lease_until: float | None,
    fence: int,
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
        owner=owner,
        lease_until=lease_until,
        fence=fence,
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
        owner,
        lease_until,
        fence,
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
    fence: int | None,
) -> int:
    last_seq = after_seq + len(columns[0])
    ends = status in TERMINAL_STATUSES
    moved = await conn.fetchval(
        _APPEND, execution_id, after_seq, last_seq, updated_at, status, *columns, fence, ends
    )
    if moved:
        return last_seq
    found = await conn.fetchrow(
        "SELECT last_seq, fence FROM executions WHERE execution_id = $1", execution_id
    )
    raise append_refusal(execution_id, after_seq, fence, found)


async def claim(
    conn: Any, execution_id: str, owner: str, lease_until: float, now: float
) -> int | None:
    fence = await conn.fetchval(_CLAIM, execution_id, owner, lease_until, now)
    return None if fence is None else int(fence)


async def renew(conn: Any, owner: str, fences: Mapping[str, int], lease_until: float) -> set[str]:
    # Sorted: rows are then most likely locked in id order, the order every batch
    # locks rows in, which keeps deadlocks with other processes' batches rare.
    ids = sorted(fences)
    rows = await conn.fetch(_RENEW, owner, lease_until, ids, [fences[i] for i in ids])
    return {r[0] for r in rows}


async def release(conn: Any, execution_id: str, owner: str, fence: int) -> None:
    await conn.execute(_RELEASE, execution_id, owner, fence)


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
        lease_until=r[10],
        fence=r[11],
    )
