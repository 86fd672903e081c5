"""Group commit for PostgreSQL: one task owns a connection and commits queued writes together.

With ``synchronous_commit=on`` every ``COMMIT`` waits for a WAL flush, which
dominates the cost of an append. Requests that queue up while one transaction is
being committed are applied together in the next one, so under load many appends
(of many executions) share one flush. A request that fails in SQL is undone
alone (in its own SAVEPOINT) and the rest of the batch still commits; see
``_apply_fast`` for why savepoints are only used once a batch hit such an error.
Results are delivered only after ``COMMIT`` returned, so an awaiting coroutine
never sees a write that is not durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from coordinator.journal.base import JournalError, SequenceConflict, WriteObserver, report_writes
from coordinator.journal.postgres_db import Target, is_unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Apply = Callable[[Any], Awaitable[Any]]

# A request that lost a deadlock (to another process's batch) is re-run in a later
# transaction, after ours released its locks; this bounds how often.
MAX_ATTEMPTS = 5


@dataclass
class WriteStats:
    """Counters of the writer task, for tests and metrics."""

    requests: int = 0  # write requests committed or rejected (one per create/append)
    commits: int = 0  # transactions committed
    largest_batch: int = 0
    retries: int = 0  # requests re-run after a deadlock with another process
    reconnects: int = 0  # connections closed after an error (the pool opens new ones)


@dataclass(slots=True)
class _Request:
    apply: Apply
    # Batches apply requests in execution-id order, as every process does, so two
    # processes' batches lock execution rows in the same order and do not deadlock
    # on them (a taken idempotency key still can: that request is retried).
    key: str
    future: asyncio.Future[Any]
    attempts: int = 0
    submitted: float = 0.0  # time.perf_counter() when it was queued


class _Retry(Exception):
    """Outcome of a request that lost a deadlock: run it again in the next batch."""


class _Redo(Exception):
    """An SQL error aborted the batch's transaction: apply it again, request by request."""


class GroupCommitWriter:
    """A task draining a queue of write requests into as few transactions as possible."""

    def __init__(
        self,
        pool: Any,
        target: Target,
        *,
        batch_window: float = 0.0,
        max_batch: int = 500,
        acquire_timeout: float = 10.0,
    ) -> None:
        self.stats = WriteStats()
        self.observer: WriteObserver | None = None
        self._pool = pool
        self._target = target
        self._batch_window = batch_window
        self._max_batch = max_batch
        self._acquire_timeout = acquire_timeout
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue()
        self._retry: list[_Request] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def submit(self, key: str, apply: Callable[[Any], Awaitable[T]]) -> asyncio.Future[T]:
        if self._closed:
            raise self._target.closed()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(apply, key, future, 0, time.perf_counter()))
        self._ensure_running()
        return future

    def _ensure_running(self) -> None:
        # The loop catches every error of a batch, so the task only ends on close or
        # through a bug; either way the queue must not be left without a consumer.
        if self._task is not None and not self._task.done():
            return
        if self._task is not None and not self._task.cancelled() and self._task.exception():
            log.error("journal writer task died; restarting", exc_info=self._task.exception())
        self._task = asyncio.create_task(self._run(), name="sagaray-journal-writer")

    async def stop(self) -> None:
        """Commit everything queued so far, then end the task and return its connection."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None and not self._task.done():
            self._queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await self._task
        self._fail_queued()

    async def _run(self) -> None:
        batch: list[_Request] = []
        try:
            while True:
                batch, stop = await self._next_batch()
                if batch:
                    await self._commit_batch(batch)
                batch = []
                if stop:
                    break
            # Deadlock losers of the last batch still get their attempts.
            while self._retry:
                batch, self._retry = self._retry, []
                await self._commit_batch(batch)
                batch = []
        finally:
            # Cancelled mid-batch, maybe mid-COMMIT: the callers' writes are in doubt.
            for request in batch:
                _settle(request.future, self._target.interrupted())

    def _fail_queued(self) -> None:
        for request in self._retry:
            _settle(request.future, self._target.closed())
        self._retry.clear()
        while not self._queue.empty():
            queued = self._queue.get_nowait()
            if queued is not None:
                _settle(queued.future, self._target.closed())

    async def _next_batch(self) -> tuple[list[_Request], bool]:
        """Wait for one request, then take whatever else is queued (or arrives in the window)."""
        batch, self._retry = self._retry, []
        if not batch:
            first = await self._queue.get()
            if first is None:
                return [], True
            batch.append(first)
        if self._batch_window > 0:
            await asyncio.sleep(self._batch_window)
        while len(batch) < self._max_batch and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def _commit_batch(self, batch: list[_Request]) -> None:
        # A request whose caller gave up before it was written is dropped, not applied.
        live = sorted((r for r in batch if not r.future.done()), key=lambda r: r.key)
        if not live:
            return
        try:
            outcomes = await self._transaction(live)
        except Exception as exc:
            failure = self._failure(exc)
            outcomes = [failure] * len(live)
        for request, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, _Retry) and request.attempts < MAX_ATTEMPTS:
                request.attempts += 1
                self.stats.retries += 1
                self._retry.append(request)
                continue
            self.stats.requests += 1
            _settle(request.future, self._outcome(outcome))
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        if self.observer is not None:
            # Those retried after a deadlock are observed once, when they are settled.
            report_writes(self.observer, [r.submitted for r in live if r.future.done()])

    def _outcome(self, outcome: Any) -> Any:
        """What the caller gets: a result, or a JournalError (never a driver exception)."""
        if isinstance(outcome, _Retry):
            return self._target.unavailable(outcome.__cause__ or outcome)
        if isinstance(outcome, Exception) and not isinstance(outcome, JournalError):
            return self._failure(outcome)
        return outcome

    async def _transaction(self, batch: list[_Request]) -> list[Any]:
        # A connection per batch rather than one held for good: the pool replaces the
        # ones the server dropped (a restart), and with no reset query a release is free.
        for attempt in (1, 2):
            conn = await self._pool.acquire(timeout=self._acquire_timeout)
            try:
                tx = conn.transaction()
                try:
                    await tx.start()
                except Exception as exc:
                    if attempt == 2 or not is_unavailable(exc):
                        raise
                    # Nothing was written yet, so a connection that died while idle
                    # (the server restarted) is replaced and the batch tried once more.
                    self._discard(conn)
                    continue
                return await self._apply_batch(conn, tx, batch)
            except BaseException:
                self._discard(conn)
                raise
            finally:
                with contextlib.suppress(Exception):
                    await self._pool.release(conn)
        raise AssertionError("unreachable")

    async def _apply_batch(self, conn: Any, tx: Any, batch: list[_Request]) -> list[Any]:
        try:
            outcomes = [await _apply_fast(conn, request) for request in batch]
        except _Redo:
            # One request hit an SQL error, which aborted the whole transaction.
            # Nothing is delivered yet: start over with a savepoint per request,
            # so that only the failing one is undone.
            await tx.rollback()
            tx = conn.transaction()
            await tx.start()
            outcomes = [await _apply_isolated(conn, request) for request in batch]
        await tx.commit()
        self.stats.commits += 1
        return outcomes

    def _discard(self, conn: Any) -> None:
        """Close a connection whose state is unknown (a query may still be in flight)."""
        self.stats.reconnects += 1
        # InterfaceError: the pool already took it back, having seen it closed.
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.terminate()

    def _failure(self, exc: Exception) -> JournalError:
        if is_unavailable(exc):
            return self._target.unavailable(exc)
        return self._target.failed("write", exc)


async def _apply_fast(conn: Any, request: _Request) -> Any:
    """Apply one request without a savepoint; raise _Redo if it failed in SQL.

    The expected refusals (a sequence conflict, a taken idempotency key) are found
    by statements that change nothing and raise no SQL error, so they need no
    savepoint: savepoints would cost two round trips per request, and round trips,
    not the commit, bound a batch's time.
    """
    try:
        return await request.apply(conn)
    except JournalError as exc:
        return exc
    except Exception as exc:
        if is_unavailable(exc):
            raise
        raise _Redo from exc


async def _apply_isolated(conn: Any, request: _Request) -> Any:
    """Apply one request in a savepoint; return its result or the exception it raised."""
    try:
        async with conn.transaction():
            return await request.apply(conn)
    except JournalError as exc:
        return exc
    except asyncpg.UniqueViolationError as exc:
        return SequenceConflict(f"conflicting write: {exc}")
    except asyncpg.TransactionRollbackError as exc:
        retry = _Retry()
        retry.__cause__ = exc
        return retry
    except Exception as exc:
        if is_unavailable(exc):
            raise  # the connection or the server is gone: the whole batch is in doubt
        return exc


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():  # the awaiting coroutine was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
