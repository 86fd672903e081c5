"""Fixtures of the journal tests: the contract suite runs once per store factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from coordinator.journal.base import Journal
from coordinator.journal.sqlite import SQLiteJournal

StoreFactory = Callable[[Path], Journal]


def _sqlite_store(tmp_path: Path) -> Journal:
    return SQLiteJournal(tmp_path / "journal.db")


# Each store the contract applies to; a PostgreSQL factory (e.g. one that creates a
# fresh schema on a test server) joins this list when that store lands.
STORES = [pytest.param(_sqlite_store, id="sqlite")]


@pytest.fixture(params=STORES)
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    factory: StoreFactory = request.param
    store = factory(tmp_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
