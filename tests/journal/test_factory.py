"""journal_from_url: which store a URL names, and where its file goes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.journal.factory import journal_from_url
from coordinator.journal.postgres import PostgresJournal
from coordinator.journal.sqlite import SQLiteJournal


async def sqlite_path(url: str) -> Path:
    """The file ``url`` names, after opening it once (which creates the parent dirs)."""
    journal = journal_from_url(url)
    assert isinstance(journal, SQLiteJournal)
    await journal.open()
    await journal.close()
    return journal.path


async def test_relative_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await asyncio.to_thread(monkeypatch.chdir, tmp_path)  # getcwd() blocks
    assert await sqlite_path("sqlite:///data/j.db") == Path("data/j.db")
    assert await asyncio.to_thread((tmp_path / "data" / "j.db").is_file)


async def test_absolute_sqlite_url_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "j.db"
    assert await sqlite_path(f"sqlite:///{target}") == target  # target starts with "/"
    assert await asyncio.to_thread(target.is_file)


async def test_bare_path(tmp_path: Path) -> None:
    target = tmp_path / "bare" / "j.db"
    assert await sqlite_path(str(target)) == target
    assert await asyncio.to_thread(target.is_file)


def test_building_touches_no_file(tmp_path: Path) -> None:
    journal_from_url(f"sqlite:///{tmp_path}/not/yet/j.db")
    assert not (tmp_path / "not").exists()


async def test_url_options_and_a_working_journal(tmp_path: Path) -> None:
    journal = journal_from_url(f"sqlite:///{tmp_path}/j.db?batch_window=0.002&busy_timeout=3")
    await journal.open()
    try:
        await journal.ping()
    finally:
        await journal.close()
    with pytest.raises(ValueError, match="unknown option"):
        journal_from_url(f"sqlite:///{tmp_path}/j.db?nope=1")
    with pytest.raises(ValueError, match="not a number"):
        journal_from_url(f"sqlite:///{tmp_path}/j.db?batch_window=soon")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite:j.db"])
def test_sqlite_url_without_a_file(url: str) -> None:
    with pytest.raises(ValueError):
        journal_from_url(url)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgresql_url_builds_without_connecting(scheme: str) -> None:
    journal = journal_from_url(f"{scheme}://sagaray:s3cret@db.internal:5433/sagaray?max_size=4")
    assert isinstance(journal, PostgresJournal)
    assert journal.target.name == "db.internal:5433/sagaray"  # what messages call it
    assert "s3cret" not in journal.target.name
    for url, name in (
        ("postgresql://db.internal/j", "db.internal:5432/j"),
        ("postgresql:///j?host=/run/postgresql&port=5433", "/run/postgresql:5433/j"),
    ):
        other = journal_from_url(url)
        assert isinstance(other, PostgresJournal) and other.target.name == name


def test_unknown_scheme_names_the_url() -> None:
    with pytest.raises(ValueError, match=r"mysql://db/x"):
        journal_from_url("mysql://db/x")
    with pytest.raises(ValueError) as caught:
        journal_from_url("redis://u:hunter2@cache:6379/0")
    assert "hunter2" not in str(caught.value)
