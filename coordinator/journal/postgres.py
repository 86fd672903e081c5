"""The PostgreSQL journal: an asyncpg pool, group commit, safe for many processes and hosts.

Writes go through :class:`GroupCommitWriter` (one task, one connection at a
time); reads use the other connections of the pool. Any number of processes may share one
database: the sequence check is a conditional ``UPDATE`` of the execution's row,
which PostgreSQL's row lock serializes across every connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from coordinator.core.events import Event, event_from_json
from coordinator.journal import postgres_sql as sql
from coordinator.journal.base import (
    CreateResult,
    ExecutionRow,
    ExecutionStatus,
    JournalError,
    NewExecution,
    Page,
    StoredEvent,
    WriteObserver,
    initial_fence,
)
from coordinator.journal.cursor import decode_cursor, encode_cursor
from coordinator.journal.postgres_db import Target, is_unavailable, migrate
from coordinator.journal.postgres_sql import ROW_COLUMNS, event_columns, to_row
from coordinator.journal.postgres_writer import GroupCommitWriter, WriteStats

T = TypeVar("T")
# A server configured with synchronous_commit=off must not make our acknowledged
# appends losable, so sessions ask for "on" (a WAL flush before COMMIT returns).
_SESSION_DEFAULTS = {"application_name": "sagaray-journal", "synchronous_commit": "on"}
_NEWEST_FIRST = "ORDER BY created_at DESC, execution_id DESC"


class PostgresJournal:
    """A :class:`~coordinator.journal.base.Journal` stored in a PostgreSQL database."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        batch_window: float = 0.0,
        max_batch: int = 500,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(
                f"need 0 <= min_size <= max_size and max_size >= 1, got"
                f" min_size={min_size}, max_size={max_size}"
            )
        self.target = Target(dsn)
        self._dsn = dsn
        # asyncpg lets these win over the URL's query, so only those the URL does not
        # set are passed (e.g. ?synchronous_commit=remote_apply must stay possible).
        in_url = {name for name, _ in parse_qsl(urlsplit(dsn).query)}
        self._server_settings = {k: v for k, v in _SESSION_DEFAULTS.items() if k not in in_url}
        self._min_size = min_size
        self._max_size = max_size
        self._batch_window = batch_window
        self._max_batch = max_batch
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: Any = None
        self._writer: GroupCommitWriter | None = None
        self._observer: WriteObserver | None = None
        self._stats = WriteStats()
        self._closed = False
        self._open_lock = asyncio.Lock()

    def observe(self, observer: WriteObserver) -> None:
        """Tell ``observer`` about every commit and write request from now on (metrics)."""
        self._observer = observer
        if self._writer is not None:
            self._writer.observer = observer

    @property
    def stats(self) -> WriteStats:
        return self._writer.stats if self._writer is not None else self._stats

    async def open(self) -> None:
        """Connect, migrate the schema and start the writer; JournalUnavailable when unreachable."""
        async with self._open_lock:
            if self._closed:
                raise JournalError(f"PostgreSQL journal at {self.target.name} was closed")
            if self._pool is not None:
                return
            pool = await self._guard(self._create_pool(), "open")
            try:
                async with pool.acquire(timeout=self._connect_timeout) as conn:
                    await self._guard(migrate(conn, self.target), "migration")
            except BaseException as exc:
                pool.terminate()
                if is_unavailable(exc):
                    raise self.target.unavailable(exc) from exc
                raise
            self._pool = pool
            self._writer = GroupCommitWriter(
                pool,
                self.target,
                batch_window=self._batch_window,
                max_batch=self._max_batch,
                acquire_timeout=self._connect_timeout,
            )
            self._writer.observer = self._observer

    async def _create_pool(self) -> Any:
        return await asyncpg.create_pool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._connect_timeout,
            command_timeout=self._command_timeout,
            server_settings=self._server_settings,
            # Sessions never change state (no SET, LISTEN, cursors or session locks),
            # so the default reset query would only cost a round trip per release.
            reset=_no_reset,
        )

    async def close(self) -> None:
        """Commit what is queued, then close the pool (idempotent)."""
        async with self._open_lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
            if self._writer is not None:
                await self._writer.stop()
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), self._connect_timeout)
                except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    pool.terminate()

    async def __aenter__(self) -> PostgresJournal:
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
        self,
        execution: NewExecution,
        events: Sequence[Event],
        owner: str | None = None,
        lease_until: float | None = None,
    ) -> CreateResult:
        fence = initial_fence(owner, lease_until)
        columns = event_columns(0, events)
        updated_at = events[-1].at if events else execution.created_at
        return await self._write(
            execution.execution_id,
            lambda conn: sql.create(
                conn, execution, columns, updated_at, owner, lease_until, fence
            ),
        )

    async def append(
        self,
        execution_id: str,
        after_seq: int,
        events: Sequence[Event],
        status: ExecutionStatus | None = None,
        fence: int | None = None,
    ) -> int:
        if after_seq < 0:
            raise ValueError(f"after_seq must be >= 0, got {after_seq}")
        columns = event_columns(after_seq, events)
        updated_at = events[-1].at if events else time.time()
        return await self._write(
            execution_id,
            lambda conn: sql.append(
                conn, execution_id, after_seq, columns, status, updated_at, fence
            ),
        )

    async def claim(
        self, execution_id: str, owner: str, lease_until: float, now: float
    ) -> int | None:
        return await self._write(
            execution_id, lambda conn: sql.claim(conn, execution_id, owner, lease_until, now)
        )

    async def renew(self, owner: str, fences: Mapping[str, int], lease_until: float) -> set[str]:
        if not fences:
            return set()
        held = dict(fences)  # the caller may change its mapping while the request waits
        # Keyed by its first id: the batch is sorted by key, so the renewal takes its
        # row locks about where the other requests of the batch expect them.
        return await self._write(min(held), lambda conn: sql.renew(conn, owner, held, lease_until))

    async def release(self, execution_id: str, owner: str, fence: int) -> None:
        await self._write(execution_id, lambda conn: sql.release(conn, execution_id, owner, fence))

    async def _write(self, key: str, apply: Callable[[Any], Awaitable[T]]) -> T:
        if self._writer is None or self._closed:
            raise self.target.closed()
        return await self._writer.submit(key, apply)

    # -- reads --------------------------------------------------------------

    async def read(self, execution_id: str, after_seq: int = 0) -> list[StoredEvent]:
        rows = await self._fetch(
            "SELECT seq, data FROM events WHERE execution_id = $1 AND seq > $2 ORDER BY seq",
            execution_id,
            after_seq,
        )
        return [StoredEvent(r[0], event_from_json(r[1])) for r in rows]

    async def get_execution(self, execution_id: str) -> ExecutionRow | None:
        rows = await self._fetch(
            f"SELECT {ROW_COLUMNS} FROM executions WHERE execution_id = $1", execution_id
        )
        return to_row(rows[0]) if rows else None

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
        clauses: list[str] = []
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if saga is not None:
            clauses.append(f"saga = {param(saga)}")
        if status is not None:
            clauses.append(f"status = {param(status)}")
        if after is not None:
            # Keyset paging: rows inserted since the last page sort before the cursor
            # (they are newer), so they can neither repeat nor shift the rows after it.
            clauses.append(f"(created_at, execution_id) < ({param(after[0])}, {param(after[1])})")
        where = " AND ".join(clauses) or "TRUE"
        query = (
            f"SELECT {ROW_COLUMNS} FROM executions WHERE {where} {_NEWEST_FIRST}"
            f" LIMIT {param(limit + 1)}"
        )
        found = [to_row(r) for r in await self._fetch(query, *params)]
        items = found[:limit]
        next_cursor = encode_cursor(items[-1]) if len(found) > limit else None
        return Page(items=items, next_cursor=next_cursor)

    async def non_terminal(self) -> list[ExecutionRow]:
        query = (
            f"SELECT {ROW_COLUMNS} FROM executions WHERE status IN ({sql.LIVE})"
            " ORDER BY created_at, execution_id"
        )
        return [to_row(r) for r in await self._fetch(query)]

    async def live_counts(self) -> dict[str | None, int]:
        query = (f"SELECT owner, count(*) FROM executions WHERE status IN ({sql.LIVE})"
                 " GROUP BY owner")
        return {r[0]: int(r[1]) for r in await self._fetch(query)}

    async def expired(self, now: float, limit: int = 500) -> list[ExecutionRow]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return [to_row(r) for r in await self._fetch(sql.EXPIRED, now, limit)]

    async def ping(self) -> None:
        await self._fetch("SELECT 1 FROM schema_version LIMIT 1")

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        pool = self._pool
        if pool is None or self._closed:
            raise self.target.closed()
        # Once more on a lost connection: a read is harmless to repeat, and the pool
        # replaces a connection the server dropped (e.g. on restart) at the next acquire.
        for attempt in (1, 2):
            try:
                async with pool.acquire(timeout=self._connect_timeout) as conn:
                    return cast(list[Any], await conn.fetch(query, *args))
            except Exception as exc:
                if not is_unavailable(exc):
                    raise self.target.failed("read", exc) from exc
                if attempt == 2 or self._closed:
                    raise self.target.unavailable(exc) from exc
        raise AssertionError("unreachable")

    async def _guard(self, operation: Awaitable[T], what: str) -> T:
        try:
            return await operation
        except Exception as exc:
            if is_unavailable(exc):
                raise self.target.unavailable(exc) from exc
            if isinstance(exc, JournalError):
                raise
            raise self.target.failed(what, exc) from exc


async def _no_reset(conn: Any) -> None:
    return None


__all__ = ["PostgresJournal", "WriteStats"]
