"""Group commit: one thread owns the write connection and commits queued requests together.

Every ``COMMIT`` in synchronous=FULL mode costs an fsync, which dominates the
cost of an append. Requests that queue up while one transaction is being
committed are applied together in the next transaction, so under load many
appends (of many executions) share one fsync. Each request runs inside its own
SAVEPOINT: a request that fails (a sequence conflict) is undone alone and the
rest of the batch still commits. Results are delivered only after ``COMMIT``
returned, so an awaiting coroutine never sees a write that is not durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from coordinator.journal.base import JournalError, SequenceConflict, WriteObserver, report_writes
from coordinator.journal.sqlite_db import (
    LOCK_RETRY_FOR,
    backoff_delays,
    is_busy,
    rollback_quietly,
    unavailable,
)
from coordinator.journal.sqlite_turns import WriterTurns

T = TypeVar("T")
log = logging.getLogger(__name__)
Apply = Callable[[sqlite3.Connection], Any]


@dataclass
class WriteStats:
    """Counters of the writer thread, for tests and metrics (written by that thread only)."""

    requests: int = 0  # write requests committed or rejected (one per create/append)
    commits: int = 0  # transactions committed
    largest_batch: int = 0
    lock_retries: int = 0  # transactions restarted because another process held the lock
    turn_waits: int = 0  # batches that waited for another writer's turn (sqlite_turns)


@dataclass(slots=True)
class _Request:
    apply: Apply
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    submitted: float = 0.0  # time.perf_counter() when it was queued


class GroupCommitWriter:
    """A thread draining a queue of write requests into as few transactions as possible."""

    def __init__(
        self,
        path: Path,
        connect: Callable[[], sqlite3.Connection],
        *,
        batch_window: float = 0.0,
        max_batch: int = 1000,
        take_turns: bool = True,
    ) -> None:
        self.stats = WriteStats()
        self.observer: WriteObserver | None = None
        self._path = path
        self._connect = connect
        self._batch_window = batch_window
        self._max_batch = max_batch
        self._take_turns = take_turns
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        # Daemon: a process exiting without close() must not hang; committed work is safe anyway.
        self._thread = threading.Thread(
            target=self._run, name="sagaray-journal-writer", daemon=True
        )
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
        self._stopped = False  # set by the thread when it exits, under _lock
        self._lock = threading.Lock()

    async def start(self) -> None:
        """Start the thread; it opens the connection (and migrates) before taking requests."""
        self._thread.start()
        await asyncio.to_thread(self._ready.wait)
        if self._startup_error is not None:
            self._closed = True
            raise self._startup_error

    def submit(self, apply: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed or self._stopped:
                raise JournalError(f"SQLite journal {self._path} is closed")
            self._queue.put(_Request(apply, loop, future, time.perf_counter()))
        return future

    async def stop(self) -> None:
        """Commit everything queued so far, then end the thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread.ident is None:  # never started
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        # After connecting: that is what creates the journal's folder if asked to.
        turns = WriterTurns.open(self._path) if self._take_turns else None
        self._ready.set()
        try:
            stop = False
            while not stop:
                batch, stop = self._next_batch()
                if batch:
                    stop = self._write(conn, turns, batch) or stop
        finally:
            conn.close()
            if turns is not None:
                turns.close()
            self._fail_pending()

    def _write(self, conn: sqlite3.Connection, turns: WriterTurns | None,
               batch: list[_Request]) -> bool:
        """Commit ``batch`` in this writer's turn and deliver; True if the queue's end was met."""
        stop = False
        if turns is None:
            outcomes = self._commit_batch(conn, batch)
        elif not self._take_turn(turns):
            outcomes = [unavailable(self._path, TimeoutError(
                f"other writers of this file kept the write lock for {LOCK_RETRY_FOR:g} s"))
                for _ in batch]
        else:
            try:
                stop = self._take_queued(batch)  # what arrived while we waited
                outcomes = self._commit_batch(conn, batch)
            finally:
                turns.release()
        self._deliver_all(batch, outcomes)
        return stop

    def _take_turn(self, turns: WriterTurns) -> bool:
        taken = turns.acquire(LOCK_RETRY_FOR)
        self.stats.turn_waits = turns.waits
        return taken

    def _take_queued(self, batch: list[_Request]) -> bool:
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            batch.append(item)
        return False

    def _fail_pending(self) -> None:
        """Fail whatever is still queued, so that no coroutine waits forever on a dead thread."""
        with self._lock:
            self._stopped = True
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                _deliver(request, JournalError(f"SQLite journal {self._path} is closed"))

    def _next_batch(self) -> tuple[list[_Request], bool]:
        """Block for one request, then take whatever else is queued (or arrives in the window)."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self._batch_window
        while len(batch) < self._max_batch:
            try:
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    item = self._queue.get(timeout=remaining)
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Request]) -> list[Any]:
        deadline = time.monotonic() + LOCK_RETRY_FOR
        delays = backoff_delays()
        while True:
            try:
                return self._transaction(conn, batch)
            except Exception as exc:
                if _busy(exc) and time.monotonic() < deadline:
                    # Another process holds the write lock: redo the whole batch later.
                    self.stats.lock_retries += 1
                    time.sleep(next(delays))
                    continue
                return [self._failure(exc) for _ in batch]

    def _deliver_all(self, batch: list[_Request], outcomes: list[Any]) -> None:
        self.stats.requests += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        if self.observer is not None:
            # Before delivering: a caller woken by its result may read the metrics at once.
            report_writes(self.observer, [request.submitted for request in batch])
        for request, outcome in zip(batch, outcomes, strict=True):
            _deliver(request, outcome)

    def _failure(self, exc: Exception) -> JournalError:
        if isinstance(exc, sqlite3.Error):
            return unavailable(self._path, exc)
        error = JournalError(f"SQLite journal {self._path}: write failed: {exc!r}")
        error.__cause__ = exc
        return error

    def _transaction(self, conn: sqlite3.Connection, batch: list[_Request]) -> list[Any]:
        # IMMEDIATE takes the write lock up front, so the sequence checks below see
        # the latest committed state of every process writing this file.
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [_apply_one(conn, request) for request in batch]
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise
        self.stats.commits += 1
        return outcomes


def _busy(exc: Exception) -> bool:
    return isinstance(exc, sqlite3.Error) and is_busy(exc)


def _apply_one(conn: sqlite3.Connection, request: _Request) -> Any:
    """Apply one request in a savepoint; return its result or the exception it raised."""
    conn.execute("SAVEPOINT request")
    try:
        result = request.apply(conn)
    except sqlite3.IntegrityError as exc:
        _undo(conn)
        return SequenceConflict(f"conflicting write: {exc}")
    except sqlite3.Error:
        # Busy, I/O error, disk full: the transaction as a whole is in doubt.
        raise
    except Exception as exc:
        _undo(conn)
        return exc
    conn.execute("RELEASE request")
    return result


def _undo(conn: sqlite3.Connection) -> None:
    conn.execute("ROLLBACK TO request")
    conn.execute("RELEASE request")


def _deliver(request: _Request, outcome: Any) -> None:
    # RuntimeError: the loop is closed, so nobody awaits this result any more.
    with contextlib.suppress(RuntimeError):
        request.loop.call_soon_threadsafe(_settle, request.future, outcome)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():  # the awaiting coroutine was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
