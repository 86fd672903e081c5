"""The SQLite journal: one file, WAL mode, group commit, safe for several processes.

Writes go through :class:`GroupCommitWriter` (one thread, one connection);
reads run on a small pool of reader threads with their own connections, which
WAL lets proceed while a write transaction is open. The event loop never
touches a connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast, get_args

from coordinator.core.events import Event, event_from_json, event_to_json
from coordinator.journal.base import (
    TERMINAL_STATUSES,
    CreateResult,
    ExecutionRow,
    ExecutionStatus,
    JournalError,
    JournalUnavailable,
    NewExecution,
    Page,
    SequenceConflict,
    StoredEvent,
)
from coordinator.journal.cursor import decode_cursor, encode_cursor
from coordinator.journal.sqlite_db import connect, migrate, retry_busy, unavailable
from coordinator.journal.sqlite_writer import GroupCommitWriter, WriteStats

T = TypeVar("T")
EventRow = tuple[str, int, str, float, str]

_ROW_COLUMNS = (
    "execution_id, saga, version, status, created_at, updated_at, last_seq,"
    " idempotency_key, request_hash, owner"
)
_NEWEST_FIRST = "ORDER BY created_at DESC, execution_id DESC"
_INSERT_EVENT = "INSERT INTO events (execution_id, seq, type, at, data) VALUES (?, ?, ?, ?, ?)"
# Listed positively (not NOT IN terminal) so that the status index finds the few live
# executions instead of scanning every finished one.
_LIVE = ", ".join(f"'{s}'" for s in sorted(set(get_args(ExecutionStatus)) - TERMINAL_STATUSES))


class SQLiteJournal:
    """A :class:`~coordinator.journal.base.Journal` stored in one SQLite file."""

    def __init__(
        self,
        path: str | Path,
        *,
        batch_window: float = 0.0,
        busy_timeout: float = 10.0,
        max_batch: int = 1000,
        readers: int = 2,
        create_parent: bool = False,
    ) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._create_parent = create_parent
        self._writer = GroupCommitWriter(
            self.path, self._open_writer, batch_window=batch_window, max_batch=max_batch
        )
        self._readers = _ReaderPool(self.path, self._open_reader, readers)
        self._opened = False
        self._closed = False
        self._open_lock = asyncio.Lock()

    @property
    def stats(self) -> WriteStats:
        return self._writer.stats

    async def open(self) -> None:
        async with self._open_lock:
            if self._closed:
                raise JournalError(f"SQLite journal {self.path} was closed; create a new one")
            if not self._opened:
                await self._writer.start()
                self._opened = True

    async def close(self) -> None:
        """Commit what is queued, then release the threads and connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._opened = False
        await self._writer.stop()
        await asyncio.to_thread(self._readers.close)

    async def __aenter__(self) -> SQLiteJournal:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- writes -------------------------------------------------------------

    async def create_execution(
        self, execution: NewExecution, events: Sequence[Event]
    ) -> CreateResult:
        rows = _event_rows(execution.execution_id, 0, events)
        updated_at = events[-1].at if events else execution.created_at
        return await self._write(lambda conn: _create(conn, execution, rows, updated_at))

    async def append(
        self,
        execution_id: str,
        after_seq: int,
        events: Sequence[Event],
        status: ExecutionStatus | None = None,
    ) -> int:
        if after_seq < 0:
            raise ValueError(f"after_seq must be >= 0, got {after_seq}")
        rows = _event_rows(execution_id, after_seq, events)
        updated_at = events[-1].at if events else time.time()
        return await self._write(
            lambda conn: _append(conn, execution_id, after_seq, rows, status, updated_at)
        )

    async def _write(self, apply: Callable[[sqlite3.Connection], T]) -> T:
        self._require_open()
        return await self._writer.submit(apply)

    # -- reads --------------------------------------------------------------

    async def read(self, execution_id: str, after_seq: int = 0) -> list[StoredEvent]:
        return await self._read(lambda conn: _read_events(conn, execution_id, after_seq))

    async def get_execution(self, execution_id: str) -> ExecutionRow | None:
        return await self._read(lambda conn: _select_row(conn, "execution_id = ?", (execution_id,)))

    async def list_executions(
        self,
        saga: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        after = decode_cursor(cursor) if cursor is not None else None
        return await self._read(lambda conn: _list(conn, saga, status, limit, after))

    async def non_terminal(self) -> list[ExecutionRow]:
        sql = (
            f"SELECT {_ROW_COLUMNS} FROM executions WHERE status IN ({_LIVE})"
            " ORDER BY created_at, execution_id"
        )
        return await self._read(lambda conn: [_to_row(r) for r in conn.execute(sql)])

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1 FROM schema_version LIMIT 1"))

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        self._require_open()
        return await self._readers.run(query)

    def _require_open(self) -> None:
        if not self._opened:
            raise JournalUnavailable(f"SQLite journal {self.path} is not open")

    # -- connections --------------------------------------------------------

    def _open_writer(self) -> sqlite3.Connection:
        if self._create_parent:
            # Here, on the writer thread, rather than in the constructor: mkdir blocks.
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise unavailable(self.path, exc) from exc
        conn = connect(self.path, self._busy_timeout)
        try:
            migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        conn = connect(self.path, self._busy_timeout)
        conn.execute("PRAGMA query_only = ON")
        return conn


class _ReaderPool:
    """Reader threads, each lazily opening its own connection on first use."""

    def __init__(self, path: Path, open_conn: Callable[[], sqlite3.Connection], size: int) -> None:
        self._path = path
        self._open = open_conn
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="sagaray-journal-read")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    async def run(self, query: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, query)

    def _call(self, query: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return retry_busy(self._path, lambda: query(conn))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()


# -- SQL, run on the writer or a reader thread ---------------------------------


def _event_rows(execution_id: str, after_seq: int, events: Sequence[Event]) -> list[EventRow]:
    # Serialized on the caller's side so the writer holds the file lock for less time.
    return [
        (execution_id, after_seq + i, event.type, event.at, event_to_json(event))
        for i, event in enumerate(events, start=1)
    ]


def _create(
    conn: sqlite3.Connection, ex: NewExecution, rows: list[EventRow], updated_at: float
) -> CreateResult:
    if ex.idempotency_key is not None:
        existing = _select_row(
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
    )
    try:
        conn.execute(
            "INSERT INTO executions (execution_id, saga, version, status, created_at,"
            " updated_at, last_seq, idempotency_key, request_hash)"
            " VALUES (:execution_id, :saga, :version, :status, :created_at,"
            " :updated_at, :last_seq, :idempotency_key, :request_hash)",
            asdict(row),
        )
    except sqlite3.IntegrityError as exc:
        raise SequenceConflict(f"execution {ex.execution_id} already exists") from exc
    conn.executemany(_INSERT_EVENT, rows)
    return CreateResult(row, created=True)


def _append(
    conn: sqlite3.Connection,
    execution_id: str,
    after_seq: int,
    rows: list[EventRow],
    status: ExecutionStatus | None,
    updated_at: float,
) -> int:
    last_seq = after_seq + len(rows)
    # The WHERE on last_seq is the sequence check: it runs under the write lock,
    # so two writers (threads or processes) can never both extend the same seq.
    updated = conn.execute(
        "UPDATE executions SET last_seq = ?, updated_at = ?, status = coalesce(?, status)"
        " WHERE execution_id = ? AND last_seq = ?",
        (last_seq, updated_at, status, execution_id, after_seq),
    )
    if updated.rowcount != 1:
        found = conn.execute(
            "SELECT last_seq FROM executions WHERE execution_id = ?", (execution_id,)
        ).fetchone()
        if found is None:
            raise JournalError(f"unknown execution {execution_id}")
        raise SequenceConflict(
            f"execution {execution_id}: append after seq {after_seq}, but the last seq is"
            f" {found[0]}"
        )
    conn.executemany(_INSERT_EVENT, rows)
    return last_seq


def _read_events(conn: sqlite3.Connection, execution_id: str, after_seq: int) -> list[StoredEvent]:
    cursor = conn.execute(
        "SELECT seq, data FROM events WHERE execution_id = ? AND seq > ? ORDER BY seq",
        (execution_id, after_seq),
    )
    return [StoredEvent(seq, event_from_json(data)) for seq, data in cursor]


def _select_row(
    conn: sqlite3.Connection, where: str, params: tuple[Any, ...]
) -> ExecutionRow | None:
    found = conn.execute(f"SELECT {_ROW_COLUMNS} FROM executions WHERE {where}", params).fetchone()
    return None if found is None else _to_row(found)


def _list(
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
    sql = f"SELECT {_ROW_COLUMNS} FROM executions WHERE {where} {_NEWEST_FIRST} LIMIT ?"
    found = [_to_row(r) for r in conn.execute(sql, (*params, limit + 1))]
    items = found[:limit]
    next_cursor = encode_cursor(items[-1]) if len(found) > limit else None
    return Page(items=items, next_cursor=next_cursor)


def _to_row(r: sqlite3.Row | tuple[Any, ...]) -> ExecutionRow:
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


__all__ = ["SQLiteJournal", "WriteStats", "decode_cursor", "encode_cursor"]
