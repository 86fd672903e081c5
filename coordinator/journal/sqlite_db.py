"""Connections, schema migrations and lock retries of the SQLite journal.

Several processes may open the same file, so everything that takes the write
lock (changing the journal mode, migrating, writing) retries ``database is
locked`` with a short backoff instead of failing on the first contention.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from coordinator.journal.base import JournalError, JournalUnavailable

T = TypeVar("T")

# How long a writer keeps retrying a locked database before it reports the
# journal unavailable; each attempt already waits up to ``busy_timeout`` inside SQLite.
LOCK_RETRY_FOR = 30.0

# Applied in order, each in its own transaction; never edit a released entry,
# append a new one (e.g. ``ALTER TABLE executions ADD COLUMN ...``).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE executions (
        execution_id    TEXT PRIMARY KEY,
        saga            TEXT NOT NULL,
        version         INTEGER NOT NULL,
        status          TEXT NOT NULL,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL,
        last_seq        INTEGER NOT NULL,
        idempotency_key TEXT,
        request_hash    TEXT,
        owner           TEXT,
        lease_until     REAL,
        fence           INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX executions_idempotency
        ON executions (saga, idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX executions_newest
        ON executions (created_at DESC, execution_id DESC);
    CREATE INDEX executions_saga_newest
        ON executions (saga, created_at DESC, execution_id DESC);
    CREATE INDEX executions_status_newest
        ON executions (status, created_at DESC, execution_id DESC);
    CREATE TABLE events (
        execution_id TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        type         TEXT NOT NULL,
        at           REAL NOT NULL,
        data         TEXT NOT NULL,
        PRIMARY KEY (execution_id, seq)
    ) WITHOUT ROWID;
    """,
    # expired(): only live executions, ordered by lease. Partial, so it stays as small
    # as the live set however many finished executions pile up, and SQLite picks it
    # even after ANALYZE (which makes a (status, ...) index look useless, 2 values).
    # Its WHERE must read exactly as sqlite_sql.LIVE renders, or queries cannot use it.
    """
    CREATE INDEX executions_lease
        ON executions (lease_until) WHERE status IN ('compensating', 'running');
    """,
)


def is_busy(exc: sqlite3.Error) -> bool:
    """True for SQLITE_BUSY / SQLITE_LOCKED (any extended code): another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    message = str(exc)
    return "database is locked" in message or "database is busy" in message


def backoff_delays(first: float = 0.002, cap: float = 0.1) -> Iterator[float]:
    """Exponential delays with jitter, so that competing processes do not retry in lockstep."""
    delay = first
    while True:
        yield delay * random.uniform(0.5, 1.5)
        delay = min(delay * 2, cap)


def unavailable(path: Path, exc: BaseException) -> JournalUnavailable:
    return JournalUnavailable(f"SQLite journal {path} is unavailable: {exc}")


def retry_busy(path: Path, operation: Callable[[], T]) -> T:
    """Run ``operation``, retrying while the database is locked; map SQLite errors to ours."""
    deadline = time.monotonic() + LOCK_RETRY_FOR
    delays = backoff_delays()
    while True:
        try:
            return operation()
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            if not (is_busy(exc) and time.monotonic() < deadline):
                raise unavailable(path, exc) from exc
        time.sleep(next(delays))


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with fsync on every commit; raises JournalUnavailable."""
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise unavailable(path, exc) from exc
    try:
        retry_busy(path, lambda: _configure(conn, path, busy_timeout))
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path, busy_timeout: float) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        # Without WAL, readers would block the writer and the locking story changes.
        raise JournalUnavailable(f"SQLite journal {path} cannot use WAL (journal_mode={mode})")
    # FULL fsyncs the WAL on every commit: an acknowledged append survives power loss.
    conn.execute("PRAGMA synchronous = FULL")


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the schema up to date; returns the schema version."""
    return retry_busy(path, lambda: _migrate_once(conn, path))


def _migrate_once(conn: sqlite3.Connection, path: Path) -> int:
    # IMMEDIATE: two processes opening a fresh file must not both apply version 1.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        (current,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        if current > len(MIGRATIONS):
            raise JournalError(
                f"SQLite journal {path} has schema version {current}, newer than this"
                f" code ({len(MIGRATIONS)}); upgrade Sagaray"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            for statement in split_statements(MIGRATIONS[version - 1]):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    return len(MIGRATIONS)


def split_statements(script: str) -> list[str]:
    """Split a script into statements.

    ``executescript`` would commit the open transaction first, which breaks the
    atomicity of a migration, so statements run one by one with ``execute``.
    """
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in migration: {pending.strip()!r}")
    return statements


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open; the original error matters more than this one."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
