"""SQLite-specific behaviour: opening, errors, schema, settings, group commit details."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.core.events import ExecutionStarted, StepAttemptStarted
from coordinator.journal import sqlite_writer
from coordinator.journal.base import (
    ExecutionRow,
    JournalError,
    JournalUnavailable,
    NewExecution,
)
from coordinator.journal.sqlite import SQLiteJournal, decode_cursor, encode_cursor
from coordinator.journal.sqlite_db import MIGRATIONS, split_statements


def started(execution_id: str) -> ExecutionStarted:
    return ExecutionStarted(at=1.0, execution_id=execution_id, saga="s", version=1, input=None)


async def create(journal: SQLiteJournal, execution_id: str) -> None:
    await journal.create_execution(
        NewExecution(execution_id, "s", 1, time.time()), [started(execution_id)]
    )


@pytest.mark.parametrize(
    "make_path",
    [
        lambda tmp: tmp / "missing-dir" / "j.db",  # parent directory does not exist
        lambda tmp: tmp,  # a directory, not a file
    ],
    ids=["missing-dir", "directory"],
)
async def test_unreachable_file_is_unavailable(
    tmp_path: Path, make_path: Callable[[Path], Path]
) -> None:
    path = make_path(tmp_path)
    journal = SQLiteJournal(path)
    with pytest.raises(JournalUnavailable, match=re.escape(str(path))):
        await journal.open()
    await journal.close()


async def test_garbage_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    await asyncio.to_thread(path.write_bytes, b"this is not a database" * 100)
    with pytest.raises(JournalUnavailable, match=r"garbage\.db"):
        await SQLiteJournal(path).open()


async def test_close_without_open(tmp_path: Path) -> None:
    await SQLiteJournal(tmp_path / "j.db").close()


async def test_concurrent_opens_open_once(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.db")
    await asyncio.gather(journal.open(), journal.open(), journal.open())
    await journal.ping()
    await journal.close()


async def test_use_before_open_and_after_close(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.db")
    with pytest.raises(JournalUnavailable):
        await journal.ping()
    await journal.open()
    await journal.ping()
    await journal.close()
    await journal.close()  # idempotent
    with pytest.raises(JournalError):
        await create(journal, "late")
    with pytest.raises(JournalError):
        await journal.open()


async def test_schema_settings_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    for n in range(2):  # the second open finds the schema current and changes nothing
        async with SQLiteJournal(path) as journal:
            await create(journal, f"e{n}")
    await asyncio.to_thread(check_schema_and_settings, path)


def check_schema_and_settings(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        versions = conn.execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(v,) for v in range(1, len(MIGRATIONS) + 1)]
        columns = {row[1] for row in conn.execute("PRAGMA table_info(executions)")}
        assert {"owner", "lease_until", "fence", "idempotency_key", "request_hash"} <= columns
        data = conn.execute("SELECT data FROM events WHERE execution_id = 'e0'").fetchone()[0]
        assert data.startswith("{") and '"type":"execution_started"' in data
    finally:
        conn.close()
    reader = SQLiteJournal(path)._open_reader()  # set up the way every journal connection is
    try:
        assert reader.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert reader.execute("PRAGMA busy_timeout").fetchone() == (10000,)
    finally:
        reader.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with SQLiteJournal(path):
        pass
    await asyncio.to_thread(record_version, path, len(MIGRATIONS) + 1)
    with pytest.raises(JournalError, match="newer"):
        await SQLiteJournal(path).open()


def record_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
        conn.commit()
    finally:
        conn.close()


def test_split_statements_keeps_semicolons_in_strings() -> None:
    script = "CREATE TABLE t (a TEXT DEFAULT ';');\nINSERT INTO t VALUES ('x;y');\n"
    assert split_statements(script) == [
        "CREATE TABLE t (a TEXT DEFAULT ';');",
        "INSERT INTO t VALUES ('x;y');",
    ]
    with pytest.raises(ValueError):
        split_statements("CREATE TABLE t (a")


def test_cursor_round_trip() -> None:
    row = ExecutionRow("id|with|bars", "s", 1, "running", 1700000000.123456789, 0.0, 1)
    assert decode_cursor(encode_cursor(row)) == (row.created_at, row.execution_id)
    for bad in ("", "%%%", "bm8tc2VwYXJhdG9y"):  # the last is base64 of "no-separator"
        with pytest.raises(ValueError):
            decode_cursor(bad)


async def test_limit_must_be_positive(tmp_path: Path) -> None:
    async with SQLiteJournal(tmp_path / "j.db") as journal:
        with pytest.raises(ValueError):
            await journal.list_executions(limit=0)


async def test_close_commits_queued_writes(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = SQLiteJournal(path)
    await journal.open()
    tasks = [asyncio.create_task(create(journal, f"q{i}")) for i in range(50)]
    await asyncio.sleep(0)  # every task has queued its write, none has been answered
    await journal.close()
    await asyncio.gather(*tasks)
    async with SQLiteJournal(path) as reopened:
        assert len((await reopened.list_executions(limit=100)).items) == 50


async def test_batch_window_gathers_sequential_submissions(tmp_path: Path) -> None:
    async with SQLiteJournal(tmp_path / "j.db", batch_window=0.2) as journal:
        first = asyncio.create_task(create(journal, "w0"))
        await asyncio.sleep(0.02)  # arrives after the writer took the first request
        await asyncio.gather(first, create(journal, "w1"))
        assert (journal.stats.requests, journal.stats.commits) == (2, 1)


async def test_cancelled_waiter_does_not_break_the_writer(tmp_path: Path) -> None:
    async with SQLiteJournal(tmp_path / "j.db") as journal:
        task = asyncio.create_task(create(journal, "gone"))
        await asyncio.sleep(0)
        task.cancel()
        await create(journal, "next")
        event = StepAttemptStarted(at=2.0, step="a", attempt=1)
        assert await journal.append("next", 1, [event]) == 2


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another process's writer, as far as SQLite can tell: it holds the write lock."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def release(conn: sqlite3.Connection) -> None:
    conn.execute("ROLLBACK")
    conn.close()


async def test_locked_database_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with SQLiteJournal(path, busy_timeout=0.02) as journal:
        await create(journal, "x")
        holder = await asyncio.to_thread(hold_write_lock, path)
        append = asyncio.create_task(
            journal.append("x", 1, [StepAttemptStarted(at=2.0, step="a", attempt=1)])
        )
        await asyncio.sleep(0.3)  # many busy timeouts long
        assert not append.done()
        assert await journal.get_execution("x") is not None  # WAL: reads go on meanwhile
        await asyncio.to_thread(release, holder)
        assert await append == 2
        assert journal.stats.lock_retries > 0


async def test_lock_held_too_long_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writer, "LOCK_RETRY_FOR", 0.1)
    path = tmp_path / "j.db"
    async with SQLiteJournal(path, busy_timeout=0.02) as journal:
        await create(journal, "x")
        holder = await asyncio.to_thread(hold_write_lock, path)
        try:
            with pytest.raises(JournalUnavailable, match="locked"):
                await journal.append("x", 1, [StepAttemptStarted(at=2.0, step="a", attempt=1)])
        finally:
            await asyncio.to_thread(release, holder)
        assert await journal.append("x", 1, [StepAttemptStarted(at=3.0, step="a", attempt=1)]) == 2
