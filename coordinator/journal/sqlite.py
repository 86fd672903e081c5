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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from coordinator.core.events import Event
from coordinator.journal import sqlite_sql as sql
from coordinator.journal.base import (
    CreateResult,
    ExecutionRow,
    ExecutionStatus,
    JournalError,
    JournalUnavailable,
    NewExecution,
    Page,
    StoredEvent,
    WriteObserver,
    initial_fence,
)
from coordinator.journal.cursor import decode_cursor, encode_cursor
from coordinator.journal.sqlite_db import connect, migrate, retry_busy, unavailable
from coordinator.journal.sqlite_writer import GroupCommitWriter, WriteStats

T = TypeVar("T")


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

    def observe(self, observer: WriteObserver) -> None:
        """Tell ``observer`` about every commit and write request from now on (metrics)."""
        self._writer.observer = observer

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
        self,
        execution: NewExecution,
        events: Sequence[Event],
        owner: str | None = None,
        lease_until: float | None = None,
    ) -> CreateResult:
        fence = initial_fence(owner, lease_until)
        rows = sql.event_rows(execution.execution_id, 0, events)
        updated_at = events[-1].at if events else execution.created_at
        return await self._write(
            lambda conn: sql.create(conn, execution, rows, updated_at, owner, lease_until, fence)
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
        rows = sql.event_rows(execution_id, after_seq, events)
        updated_at = events[-1].at if events else time.time()
        return await self._write(
            lambda conn: sql.append(conn, execution_id, after_seq, rows, status, updated_at, fence)
        )

    async def claim(
        self, execution_id: str, owner: str, lease_until: float, now: float
    ) -> int | None:
        return await self._write(
            lambda conn: sql.claim(conn, execution_id, owner, lease_until, now)
        )

    async def renew(self, owner: str, fences: Mapping[str, int], lease_until: float) -> set[str]:
        if not fences:
            return set()
        held = dict(fences)  # the caller may change its mapping while the request waits
        return await self._write(lambda conn: sql.renew(conn, owner, held, lease_until))

    async def release(self, execution_id: str, owner: str, fence: int) -> None:
        await self._write(lambda conn: sql.release(conn, execution_id, owner, fence))

    async def _write(self, apply: Callable[[sqlite3.Connection], T]) -> T:
        self._require_open()
        return await self._writer.submit(apply)

    # -- reads --------------------------------------------------------------

    async def read(self, execution_id: str, after_seq: int = 0) -> list[StoredEvent]:
        return await self._read(lambda conn: sql.read_events(conn, execution_id, after_seq))

    async def get_execution(self, execution_id: str) -> ExecutionRow | None:
        return await self._read(
            lambda conn: sql.select_row(conn, "execution_id = ?", (execution_id,))
        )

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
        return await self._read(lambda conn: sql.list_page(conn, saga, status, limit, after))

    async def non_terminal(self) -> list[ExecutionRow]:
        query = (
            f"SELECT {sql.ROW_COLUMNS} FROM executions WHERE status IN ({sql.LIVE})"
            " ORDER BY created_at, execution_id"
        )
        return await self._read(lambda conn: [sql.to_row(r) for r in conn.execute(query)])

    async def live_counts(self) -> dict[str | None, int]:
        query = (f"SELECT owner, count(*) FROM executions WHERE status IN ({sql.LIVE})"
                 " GROUP BY owner")
        return await self._read(lambda conn: {owner: n for owner, n in conn.execute(query)})

    async def expired(self, now: float, limit: int = 500) -> list[ExecutionRow]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return await self._read(lambda conn: sql.expired(conn, now, limit))

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


__all__ = ["SQLiteJournal", "WriteStats", "decode_cursor", "encode_cursor"]
