"""The SQL of the SQLite journal, and the row type it reads back.

Write functions run on the writer thread, inside the batch's transaction and their
request's savepoint; read functions run on a reader thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, cast, get_args

from coordinator.core.events import Event, event_from_json, event_to_json
from coordinator.journal.base import (
    TERMINAL_STATUSES,
    CreateResult,
    ExecutionRow,
    ExecutionStatus,
    NewExecution,
    Page,
    SequenceConflict,
    StoredEvent,
    append_refusal,
)
from coordinator.journal.cursor import encode_cursor

EventRow = tuple[str, int, str, float, str]

ROW_COLUMNS = (
    "execution_id, saga, version, status, created_at, updated_at, last_seq,"
    " idempotency_key, request_hash, owner, lease_until, fence"
)
_NEWEST_FIRST = "ORDER BY created_at DESC, execution_id DESC"
_INSERT_EVENT = "INSERT INTO events (execution_id, seq, type, at, data) VALUES (?, ?, ?, ?, ?)"
# Listed positively (not NOT IN terminal) so that the status index finds the few live
# executions instead of scanning every finished one. The text must stay identical to
# the WHERE of the partial index executions_lease (migration 2), or SQLite won't use it.
LIVE = ", ".join(f"'{s}'" for s in sorted(set(get_args(ExecutionStatus)) - TERMINAL_STATUSES))

# A restarted owner re-claims its own executions: the fence goes up all the same, so
# that appends of its former incarnation (still in flight somewhere) are refused.
_CLAIM = f"""
UPDATE executions SET owner = :owner, lease_until = :lease_until, fence = fence + 1
WHERE execution_id = :execution_id AND status IN ({LIVE})
  AND (owner IS NULL OR lease_until IS NULL OR lease_until < :now OR owner = :owner)
RETURNING fence
"""

# The held leases come as one JSON object (id -> fence) joined with json_each, so a
# renewal of thousands is a single statement: SQLite has no array parameters, and a
# statement per id would hold the write lock for thousands of steps.
_RENEW = f"""
UPDATE executions SET lease_until = :lease_until
FROM json_each(:held) AS held
WHERE executions.execution_id = held.key AND executions.fence = held.value
  AND executions.owner = :owner AND executions.status IN ({LIVE})
RETURNING executions.execution_id
"""

_EXPIRED = f"""
SELECT {ROW_COLUMNS} FROM executions
WHERE status IN ({LIVE}) AND (owner IS NULL OR lease_until IS NULL OR lease_until < ?)
ORDER BY lease_until NULLS FIRST, created_at, execution_id
LIMIT ?
"""


def event_rows(execution_id: str, after_seq: int, events: Sequence[Event]) -> list[EventRow]:
    # Serialized on the caller's side so the writer holds the file lock for less time.
    return [
        (execution_id, after_seq + i, event.type, event.at, event_to_json(event))
        for i, event in enumerate(events, start=1)
    ]


def create(
    conn: sqlite3.Connection,
    ex: NewExecution,
    rows: list[EventRow],
    updated_at: float,
    owner: str | None,
    lease_until: float | None,
    fence: int,
) -> CreateResult:
    if ex.idempotency_key is not None:
        existing = select_row(
            conn, "saga = ? AND idempotency_key = ?", (ex.saga, ex.idempotency_key)
        )
        if existing is not None:
            return CreateResult(existing, created=False)
    row = ExecutionRow(
        execution_id=ex.execution_id,
        saga=ex.saga,
        version=ex.version,
        status="running",
        created_at=ex.created_at,
        updated_at=updated_at,
        last_seq=len(rows),
        idempotency_key=ex.idempotency_key,
        request_hash=ex.request_hash,
        owner=owner,
        lease_until=lease_until,
        fence=fence,
    )
    try:
        conn.execute(
            "INSERT INTO executions (execution_id, saga, version, status, created_at,"
            " updated_at, last_seq, idempotency_key, request_hash, owner, lease_until, fence)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            # Plain fields in column order: dataclasses.asdict deep-copies (2 % of an
            # API process's samples under load).
            (row.execution_id, row.saga, row.version, row.status, row.created_at,
             row.updated_at, row.last_seq, row.idempotency_key, row.request_hash,
             row.owner, row.lease_until, row.fence),
        )
    except sqlite3.IntegrityError as exc:
        raise SequenceConflict(f"execution {ex.execution_id} already exists") from exc
    conn.executemany(_INSERT_EVENT, rows)
    return CreateResult(row, created=True)


def append(
    conn: sqlite3.Connection,
    execution_id: str,
    after_seq: int,
    rows: list[EventRow],
    status: ExecutionStatus | None,
    updated_at: float,
    fence: int | None,
) -> int:
    last_seq = after_seq + len(rows)
    # The WHERE on last_seq (and fence) is the check: it runs under the write lock, so
    # two writers (threads or processes) can never both extend the same seq, and a
    # fenced-out owner cannot slip in between another host's claim and its appends.
    # An ended execution needs no owner: its lease goes in the same statement.
    updated = conn.execute(
        "UPDATE executions SET last_seq = :last_seq, updated_at = :updated_at,"
        " status = coalesce(:status, status),"
        " owner = CASE WHEN :ends THEN NULL ELSE owner END,"
        " lease_until = CASE WHEN :ends THEN NULL ELSE lease_until END"
        " WHERE execution_id = :execution_id AND last_seq = :after_seq"
        " AND (:fence IS NULL OR fence = :fence)",
        {
            "last_seq": last_seq,
            "updated_at": updated_at,
            "status": status,
            "ends": status in TERMINAL_STATUSES,
            "execution_id": execution_id,
            "after_seq": after_seq,
            "fence": fence,
        },
    )
    if updated.rowcount != 1:
        found = conn.execute(
            "SELECT last_seq, fence FROM executions WHERE execution_id = ?", (execution_id,)
        ).fetchone()
        raise append_refusal(execution_id, after_seq, fence, found)
    conn.executemany(_INSERT_EVENT, rows)
    return last_seq


def claim(
    conn: sqlite3.Connection, execution_id: str, owner: str, lease_until: float, now: float
) -> int | None:
    found = conn.execute(
        _CLAIM,
        {"execution_id": execution_id, "owner": owner, "lease_until": lease_until, "now": now},
    ).fetchall()
    return int(found[0][0]) if found else None


def renew(
    conn: sqlite3.Connection, owner: str, fences: Mapping[str, int], lease_until: float
) -> set[str]:
    held = json.dumps(dict(fences))
    found = conn.execute(_RENEW, {"lease_until": lease_until, "held": held, "owner": owner})
    return {execution_id for (execution_id,) in found.fetchall()}


def release(conn: sqlite3.Connection, execution_id: str, owner: str, fence: int) -> None:
    conn.execute(
        "UPDATE executions SET owner = NULL, lease_until = NULL"
        " WHERE execution_id = ? AND owner = ? AND fence = ?",
        (execution_id, owner, fence),
    )


def expired(conn: sqlite3.Connection, now: float, limit: int) -> list[ExecutionRow]:
    return [to_row(r) for r in conn.execute(_EXPIRED, (now, limit))]


def read_events(conn: sqlite3.Connection, execution_id: str, after_seq: int) -> list[StoredEvent]:
    cursor = conn.execute(
        "SELECT seq, data FROM events WHERE execution_id = ? AND seq > ? ORDER BY seq",
        (execution_id, after_seq),
    )
    return [StoredEvent(seq, event_from_json(data)) for seq, data in cursor]


def select_row(
    conn: sqlite3.Connection, where: str, params: tuple[Any, ...]
) -> ExecutionRow | None:
    found = conn.execute(f"SELECT {ROW_COLUMNS} FROM executions WHERE {where}", params).fetchone()
    return None if found is None else to_row(found)


def list_page(
    conn: sqlite3.Connection,
    saga: str | None,
    status: str | None,
    limit: int,
    after: tuple[float, str] | None,
) -> Page:
    clauses: list[str] = []
    params: list[Any] = []
    if saga is not None:
        clauses.append("saga = ?")
        params.append(saga)
    if status is not None:
        clauses.append("status = ?")
        params.append(status)
    if after is not None:
        # Keyset paging: rows inserted since the last page sort before the cursor
        # (they are newer), so they can neither repeat nor shift the rows after it.
        clauses.append("(created_at, execution_id) < (?, ?)")
        params.extend(after)
    where = " AND ".join(clauses) or "1"
    sql = f"SELECT {ROW_COLUMNS} FROM executions WHERE {where} {_NEWEST_FIRST} LIMIT ?"
    found = [to_row(r) for r in conn.execute(sql, (*params, limit + 1))]
    items = found[:limit]
    next_cursor = encode_cursor(items[-1]) if len(found) > limit else None
    return Page(items=items, next_cursor=next_cursor)


def to_row(r: sqlite3.Row | tuple[Any, ...]) -> ExecutionRow:
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
