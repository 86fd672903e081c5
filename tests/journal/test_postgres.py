"""What is particular to the PostgreSQL journal: schema, several pools, failures, recovery.

The shared behaviour is in ``test_contract.py``; these tests run on the session's
throwaway server (``pg_server``), each in a schema of its own (``pg_url``), except
the ones that stop the server, which get a server of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from coordinator.core.events import HostAssigned, StepAttemptSucceeded
from coordinator.journal.base import JournalError, JournalUnavailable, SequenceConflict
from coordinator.journal.factory import journal_from_url
from coordinator.journal.postgres import PostgresJournal
from coordinator.journal.postgres_db import MIGRATIONS
from tests.journal.test_contract import T0, create, step
from tests.pg import (
    PgServer,
    drop_database,
    drop_schema,
    fresh_database,
    fresh_schema,
    running_server,
)


@pytest.fixture
async def journal(pg_url: str) -> AsyncIterator[PostgresJournal]:
    async with PostgresJournal(pg_url) as opened:
        yield opened


async def query(url: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


# -- schema and migrations --------------------------------------------------------


async def test_reopening_migrates_once(pg_url: str) -> None:
    for n in range(2):  # the second open finds the schema current and changes nothing
        async with PostgresJournal(pg_url) as journal:
            await create(journal, f"e{n}")
    versions = await query(pg_url, "SELECT version FROM schema_version ORDER BY version")
    assert [r[0] for r in versions] == list(range(1, len(MIGRATIONS) + 1))
    columns = await query(
        pg_url,
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
        "executions",
    )
    assert {"owner", "lease_until", "fence"} <= {r[0] for r in columns}
    (data,) = (await query(pg_url, "SELECT data FROM events WHERE execution_id = 'e0'"))[0]
    assert '"type":"execution_started"' in data


async def test_concurrent_first_opens_migrate_once(pg_url: str) -> None:
    # Separate pools, as separate processes would have, racing on an empty database.
    journals = [PostgresJournal(pg_url) for _ in range(4)]
    try:
        await asyncio.gather(*(j.open() for j in journals))
        await asyncio.gather(*(create(j, f"p{n}") for n, j in enumerate(journals)))
    finally:
        await asyncio.gather(*(j.close() for j in journals))
    versions = await query(pg_url, "SELECT version FROM schema_version")
    assert sorted(r[0] for r in versions) == list(range(1, len(MIGRATIONS) + 1))


async def test_newer_schema_is_refused(pg_url: str) -> None:
    async with PostgresJournal(pg_url):
        pass
    await query(pg_url, "INSERT INTO schema_version VALUES ($1, 0)", len(MIGRATIONS) + 1)
    with pytest.raises(JournalError, match="newer"):
        await PostgresJournal(pg_url).open()


async def test_ids_sort_bytewise_whatever_the_locale(pg_server: PgServer) -> None:
    # Under an ICU locale "B" sorts after "a"; listing and cursors must not care.
    url = await fresh_database(pg_server, icu_locale="en-US")
    try:
        async with PostgresJournal(url) as journal:
            ids = ["B", "a-2", "a_1", "b", "A"]
            for execution_id in ids:
                await create(journal, execution_id)
            page = await journal.list_executions(limit=3)
            rest = await journal.list_executions(limit=3, cursor=page.next_cursor)
            listed = [r.execution_id for r in page.items + rest.items]
            assert listed == sorted(ids, reverse=True)
    finally:
        await drop_database(pg_server, url)


async def test_payload_comes_back_exactly(journal: PostgresJournal) -> None:
    # JSONB would refuse \u0000 and renormalize numbers; the events are stored as text.
    await create(journal, "x")
    odd = StepAttemptSucceeded(
        at=T0, step="s", attempt=1, output={"nul": "a\u0000b", "big": 2**63, "f": 0.1}
    )
    await journal.append("x", 1, [odd])
    assert [s.event for s in await journal.read("x", after_seq=1)] == [odd]


# -- several pools, one database --------------------------------------------------


async def test_pools_racing_on_one_execution(pg_url: str) -> None:
    journals = [PostgresJournal(pg_url) for _ in range(3)]
    await asyncio.gather(*(j.open() for j in journals))
    try:
        await create(journals[0], "r")
        results = await asyncio.gather(
            *(
                j.append("r", 1, [HostAssigned(at=T0, host=f"h{n}{k}")])
                for n, j in enumerate(journals)
                for k in range(3)
            ),
            return_exceptions=True,
        )
        assert results.count(2) == 1
        assert all(isinstance(r, SequenceConflict) for r in results if r != 2)
        assert [s.seq for s in await journals[2].read("r")] == [1, 2]
    finally:
        await asyncio.gather(*(j.close() for j in journals))


# -- the writer ---------------------------------------------------------------------


async def test_a_failing_request_does_not_spoil_its_batch(journal: PostgresJournal) -> None:
    ids = [f"b{n}" for n in range(20)]
    await asyncio.gather(*(create(journal, i) for i in ids))
    writer = journal._writer
    assert writer is not None
    commits = journal.stats.commits
    bad = writer.submit("b05", lambda conn: conn.execute("SELECT 1 / 0"))
    good = [journal.append(i, 1, [step(1)]) for i in ids]
    results = await asyncio.gather(bad, *good, return_exceptions=True)
    assert isinstance(results[0], JournalError) and "DivisionByZero" in str(results[0])
    assert results[1:] == [2] * len(ids)
    assert journal.stats.commits - commits < len(ids)  # still group-committed
    for i in ids:
        assert [s.seq for s in await journal.read(i)] == [1, 2]


async def test_deadlock_losers_are_retried(journal: PostgresJournal) -> None:
    await create(journal, "d")
    attempts = itertools.count(1)

    async def loses_twice(conn: Any) -> int:
        if next(attempts) <= 4:  # fast path and savepoint path, twice
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        return int(await conn.fetchval("SELECT last_seq FROM executions WHERE execution_id = 'd'"))

    writer = journal._writer
    assert writer is not None
    assert await writer.submit("d", loses_twice) == 1
    assert journal.stats.retries == 2


async def test_a_dead_writer_task_is_restarted(journal: PostgresJournal) -> None:
    await create(journal, "w")
    writer = journal._writer
    assert writer is not None and writer._task is not None
    writer._task.cancel()
    await asyncio.sleep(0)
    assert await journal.append("w", 1, [step(1)]) == 2


async def test_use_before_open_and_after_close(pg_url: str) -> None:
    journal = PostgresJournal(pg_url)
    with pytest.raises(JournalUnavailable):
        await journal.ping()
    await asyncio.gather(journal.open(), journal.open())
    await journal.ping()
    await journal.close()
    await journal.close()  # idempotent
    with pytest.raises(JournalUnavailable):
        await create(journal, "late")
    with pytest.raises(JournalUnavailable):
        await journal.read("late")
    with pytest.raises(JournalError):
        await journal.open()


async def test_a_stuck_write_times_out_as_unavailable(pg_url: str) -> None:
    async with PostgresJournal(pg_url, command_timeout=0.5) as journal:
        await create(journal, "h")
        blocker = await asyncpg.connect(pg_url)
        try:
            # Another session holds the row: the append waits like on a hung server.
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM executions WHERE execution_id = 'h' FOR UPDATE")
            with pytest.raises(JournalUnavailable, match="TimeoutError"):
                await journal.append("h", 1, [step(1)])
            await tx.rollback()
        finally:
            await blocker.close()
        assert await journal.append("h", 1, [step(1)]) == 2


# -- URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_url_builds_a_working_journal(pg_url: str, scheme: str) -> None:
    assert "?search_path=" in pg_url  # which is itself passed to the server as a setting
    url = pg_url.replace("postgresql://", f"{scheme}://", 1)
    journal = journal_from_url(f"{url}&max_size=3&batch_window=0.001&application_name=x")
    assert isinstance(journal, PostgresJournal)
    async with journal:
        await journal.ping()
        (name,) = (
            await query(
                pg_url,
                "SELECT application_name FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'x'"
                " LIMIT 1",
            )
        )[0]
        assert name == "x"  # a parameter asyncpg does not know goes to the server


def test_url_options_are_checked() -> None:
    with pytest.raises(ValueError, match="integer") as caught:
        journal_from_url("postgresql://u:hunter2@db/x?max_size=lots")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError):
        journal_from_url("postgresql://db/x?min_size=5&max_size=2")


# -- failures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[PgServer]:
    """A server these tests may stop and kill without disturbing the others."""
    with running_server() as server:
        yield server


async def test_unreachable_server_is_unavailable(own_server: PgServer) -> None:
    await asyncio.to_thread(own_server.stop)
    try:
        journal = PostgresJournal(own_server.url, connect_timeout=2)
        with pytest.raises(JournalUnavailable) as caught:
            await journal.open()
        message = str(caught.value)
        assert f"127.0.0.1:{own_server.port}/postgres" in message
        assert own_server.password not in message
    finally:
        await asyncio.to_thread(own_server.start)
    await journal.open()  # a failed open can be retried on the same object
    await journal.close()


async def test_wrong_password_is_unavailable_and_not_echoed(own_server: PgServer) -> None:
    url = own_server.url.replace(own_server.password, "not-the-pw-4711")
    with pytest.raises(JournalUnavailable) as caught:
        await PostgresJournal(url).open()
    assert "not-the-pw-4711" not in str(caught.value)
    assert "password authentication failed" in str(caught.value)


async def test_server_stop_then_recovery_without_reopening(own_server: PgServer) -> None:
    url = await fresh_schema(own_server)
    async with PostgresJournal(url, connect_timeout=2) as journal:
        await create(journal, "s")
        await asyncio.to_thread(own_server.stop)
        try:
            for attempt in (
                journal.append("s", 1, [step(1)]),
                journal.read("s"),
                journal.ping(),
                journal.list_executions(),
            ):
                with pytest.raises(JournalUnavailable) as caught:
                    await attempt
                assert f":{own_server.port}/" in str(caught.value)
                assert own_server.password not in str(caught.value)
        finally:
            await asyncio.to_thread(own_server.start)
        # The pool and the writer reconnect by themselves.
        assert await journal.append("s", 1, [step(1)]) == 2
        assert [s.seq for s in await journal.read("s")] == [1, 2]


async def test_crash_under_load_loses_no_acknowledged_append(own_server: PgServer) -> None:
    url = await fresh_schema(own_server)
    acknowledged: dict[str, int] = {}
    outage_seen: list[JournalUnavailable] = []
    stop = asyncio.Event()

    async def writer(journal: PostgresJournal, execution_id: str) -> None:
        await create(journal, execution_id)
        last = acknowledged[execution_id] = 1
        while not stop.is_set():
            try:
                last = await journal.append(execution_id, last, [step(last)])
                acknowledged[execution_id] = last
            except JournalUnavailable as exc:
                outage_seen.append(exc)
                await asyncio.sleep(0.05)
            except SequenceConflict:
                # The append was committed but its answer lost with the connection.
                with contextlib.suppress(JournalUnavailable):
                    last = (await journal.read(execution_id))[-1].seq

    async with PostgresJournal(url, connect_timeout=2) as journal:
        tasks = [asyncio.create_task(writer(journal, f"L{n}")) for n in range(20)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(own_server.restart, "immediate")  # as if it crashed
        after_crash = sum(acknowledged.values())
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        assert sum(acknowledged.values()) > after_crash, "no append succeeded after the crash"
        assert outage_seen, "no writer noticed the crash"
        for execution_id, last in acknowledged.items():
            stored = [s.seq for s in await journal.read(execution_id)]
            assert stored == list(range(1, len(stored) + 1)), f"{execution_id} has a gap"
            assert len(stored) >= last, f"{execution_id} lost acknowledged appends"
    await drop_schema(own_server, url)
