"""Schema migrations, error mapping and URL handling of the PostgreSQL journal."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg

from coordinator.journal.base import JournalError, JournalUnavailable

# Applied in order, each in the same transaction as its schema_version row; never
# edit a released entry, append a new one (e.g. ``ALTER TABLE executions ADD COLUMN ...``).
# Same tables and columns as the SQLite store (``sqlite_db.MIGRATIONS``), except:
# - ids are COLLATE "C": they sort bytewise, as in SQLite, whatever the database's
#   locale, and listing ties and cursors depend on that order;
# - events.data is TEXT, not JSONB: the exact JSON we wrote comes back, where JSONB
#   rejects the escape \u0000 (which a step's output may well contain).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE executions (
        execution_id    TEXT COLLATE "C" PRIMARY KEY,
        saga            TEXT NOT NULL,
        version         INTEGER NOT NULL,
        status          TEXT NOT NULL,
        created_at      DOUBLE PRECISION NOT NULL,
        updated_at      DOUBLE PRECISION NOT NULL,
        last_seq        BIGINT NOT NULL,
        idempotency_key TEXT,
        request_hash    TEXT,
        owner           TEXT,
        lease_until     DOUBLE PRECISION,
        fence           BIGINT NOT NULL DEFAULT 0
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
        execution_id TEXT COLLATE "C" NOT NULL,
        seq          BIGINT NOT NULL,
        type         TEXT NOT NULL,
        at           DOUBLE PRECISION NOT NULL,
        data         TEXT NOT NULL,
        PRIMARY KEY (execution_id, seq)
    );
    """,
    # expired() and renew(): only live executions, in expired()'s order (unowned first).
    # Partial, so it stays as small as the live set however many finished executions
    # pile up; the planner uses it for queries whose WHERE implies this one, i.e. that
    # list exactly these statuses (postgres_sql.LIVE).
    """
    CREATE INDEX executions_lease
        ON executions (lease_until NULLS FIRST) WHERE status IN ('compensating', 'running');
    """,
)

# Key of the transaction-scoped advisory lock that serializes migrations, so that
# several processes opening a fresh database at once do not all apply version 1.
MIGRATION_LOCK = 0x5A6A_7261_7900_0001

# Errors that mean "the database cannot be reached or cannot serve us now", as
# opposed to a bug or a constraint: these become JournalUnavailable (HTTP 503).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, DNS
    TimeoutError,  # connect, acquire or command timeout
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and a connection lost mid-query
    asyncpg.OperatorInterventionError,  # 57: shutting down, starting up, query cancelled
    asyncpg.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.PostgresSystemError,  # 58: I/O error on the server
    asyncpg.InvalidAuthorizationSpecificationError,  # 28: wrong user or password
    asyncpg.InvalidCatalogNameError,  # 3D: no such database
    asyncpg.InterfaceError,  # client side: pool or connection closed
)


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.InternalClientError):
        # "cannot switch to state N; another operation (2) is in progress": a restarting
        # server sends every session a FATAL error and then closes it, and the pool may
        # hand out a connection between the two, still consuming that error. The
        # connection is gone, as after a reset; asyncpg's own misuse errors are not this.
        return "another operation" in str(exc)
    # ValueError subclasses of InterfaceError (bad configuration, a value asyncpg
    # cannot encode) are our mistakes, not the database's absence.
    return isinstance(exc, _UNAVAILABLE) and not isinstance(exc, ValueError)


class Target:
    """What error messages call the database: ``host:port/dbname``, never the password."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        hosts = parts.netloc.rpartition("@")[2]
        if not hosts:  # e.g. postgresql:///db?host=/run/postgresql (a Unix socket)
            hosts = query.get("host", "localhost")
            if "port" in query:
                hosts += f":{query['port']}"
        if "," not in hosts and not hosts.rsplit("]", 1)[-1].count(":"):
            hosts += ":5432"
        self.name = f"{hosts}/{parts.path.lstrip('/')}"
        password = parts.password
        self._secret = unquote(password) if password else None

    def scrub(self, text: str) -> str:
        """``text`` with the password masked, in case a driver message echoes the DSN."""
        if self._secret:
            text = text.replace(self._secret, "***")
        return text

    def unavailable(self, exc: BaseException) -> JournalUnavailable:
        detail = self.scrub(f"{type(exc).__name__}: {exc}".rstrip(": "))
        error = JournalUnavailable(f"PostgreSQL journal at {self.name} is unavailable: {detail}")
        error.__cause__ = exc
        return error

    def failed(self, what: str, exc: BaseException) -> JournalError:
        error = JournalError(
            f"PostgreSQL journal at {self.name}: {what} failed: {self.scrub(repr(exc))}"
        )
        error.__cause__ = exc
        return error

    def interrupted(self) -> JournalUnavailable:
        return JournalUnavailable(
            f"PostgreSQL journal at {self.name}: the writer was interrupted mid-transaction;"
            " the write may or may not be stored (read the execution back)"
        )

    def closed(self) -> JournalUnavailable:
        return JournalUnavailable(f"PostgreSQL journal at {self.name} is not open")


async def migrate(conn: Any, target: Target) -> int:
    """Bring the schema up to date; returns the schema version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        # Checked before creating so that a role without CREATE rights can open an
        # already migrated database.
        if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
            await conn.execute(
                "CREATE TABLE schema_version"
                " (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
        current = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        if current > len(MIGRATIONS):
            raise JournalError(
                f"PostgreSQL journal at {target.name} has schema version {current}, newer than"
                f" this code ({len(MIGRATIONS)}); upgrade Sagaray"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            # Without arguments, execute() sends the whole script as one simple query.
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                version,
                time.time(),
            )
    return len(MIGRATIONS)
