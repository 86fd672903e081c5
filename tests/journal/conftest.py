"""Fixtures of the journal tests: the contract suite runs once per store factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from blockbuster import BlockBuster

from coordinator.journal.base import Journal
from coordinator.journal.factory import journal_from_url
from tests.pg import (
    PgServer,
    allow_asyncpg_config_reads,
    drop_schema,
    fresh_schema,
    pg_server,
    pg_url,
)

__all__ = ["STORES", "StoreFactory", "journal", "pg_server", "pg_url", "store_url"]


@pytest.fixture(autouse=True)
def asyncpg_may_read_its_config(no_blocking_in_event_loop: BlockBuster) -> None:
    allow_asyncpg_config_reads(no_blocking_in_event_loop)


# A factory prepares empty storage of its own and returns its URL (for journal_from_url,
# so that a test can open more journals or processes on the same storage) and a cleanup
# to run after every journal on it was closed (or None).
Cleanup = Callable[[], Awaitable[None]] | None
StoreFactory = Callable[[pytest.FixtureRequest, Path], Awaitable[tuple[str, Cleanup]]]


async def _sqlite_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Cleanup]:
    return str(tmp_path / "journal.db"), None


async def _postgres_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Cleanup]:
    # A fresh schema per test: migrations run from nothing every time.
    server: PgServer = request.getfixturevalue("pg_server")
    url = await fresh_schema(server)

    async def cleanup() -> None:
        await drop_schema(server, url)

    return url, cleanup


# Each store the contract applies to.
STORES = [
    pytest.param(_sqlite_store, id="sqlite"),
    pytest.param(_postgres_store, id="postgres"),
]


@pytest.fixture(params=STORES)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of empty storage of each store in turn, cleaned up after the test."""
    factory: StoreFactory = request.param
    url, cleanup = await factory(request, tmp_path)
    try:
        yield url
    finally:
        if cleanup is not None:
            await cleanup()


@pytest.fixture
async def journal(store_url: str) -> AsyncIterator[Journal]:
    store = journal_from_url(store_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
