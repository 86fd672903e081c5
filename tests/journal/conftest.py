"""Fixtures of the journal tests: the contract suite runs once per store factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from blockbuster import BlockBuster

from coordinator.journal.base import Journal
from coordinator.journal.factory import journal_from_url
from coordinator.journal.sqlite import SQLiteJournal
from tests.pg import (
    PgServer,
    allow_asyncpg_config_reads,
    drop_schema,
    fresh_schema,
    pg_server,
    pg_url,
)

__all__ = ["STORES", "StoreFactory", "journal", "pg_server", "pg_url"]


@pytest.fixture(autouse=True)
def asyncpg_may_read_its_config(no_blocking_in_event_loop: BlockBuster) -> None:
    allow_asyncpg_config_reads(no_blocking_in_event_loop)


# A factory builds an unopened journal on storage of its own; the fixture opens it.
# It returns a cleanup to run after the journal was closed (or None).
Cleanup = Callable[[], Awaitable[None]] | None
StoreFactory = Callable[[pytest.FixtureRequest, Path], Awaitable[tuple[Journal, Cleanup]]]


async def _sqlite_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Journal, Cleanup]:
    return SQLiteJournal(tmp_path / "journal.db"), None


async def _postgres_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Journal, Cleanup]:
    # A fresh schema per test: migrations run from nothing every time.
    server: PgServer = request.getfixturevalue("pg_server")
    url = await fresh_schema(server)

    async def cleanup() -> None:
        await drop_schema(server, url)

    return journal_from_url(url), cleanup


# Each store the contract applies to.
STORES = [
    pytest.param(_sqlite_store, id="sqlite"),
    pytest.param(_postgres_store, id="postgres"),
]


@pytest.fixture(params=STORES)
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    factory: StoreFactory = request.param
    store, cleanup = await factory(request, tmp_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        if cleanup is not None:
            await cleanup()
