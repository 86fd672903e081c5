"""Writers of one SQLite file take turns through a ``flock`` on a side file (sqlite_turns)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.core.events import ExecutionStarted, StepAttemptStarted
from coordinator.journal import sqlite_turns, sqlite_writer
from coordinator.journal.base import JournalUnavailable, NewExecution
from coordinator.journal.sqlite import SQLiteJournal
from coordinator.journal.sqlite_turns import turns_path


async def create(journal: SQLiteJournal, execution_id: str) -> None:
    started = ExecutionStarted(at=1.0, execution_id=execution_id, saga="s", version=1,
                               input=None)
    await journal.create_execution(NewExecution(execution_id, "s", 1, time.time()), [started])


def attempt(at: float = 2.0) -> list[StepAttemptStarted]:
    return [StepAttemptStarted(at=at, step="a", attempt=1)]


class TurnHolder:
    """Another writer's turn, as the side file's lock tells it."""

    def __init__(self, journal: Path) -> None:
        self.fd = os.open(turns_path(journal), os.O_RDWR | os.O_CREAT, 0o644)

    def take(self, block: bool = True) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            return False

    def give_back(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[TurnHolder]:
    made = TurnHolder(tmp_path / "j.db")
    yield made
    os.close(made.fd)


async def test_writer_waits_its_turn_and_commits_what_queued_meanwhile(
    tmp_path: Path, holder: TurnHolder
) -> None:
    async with SQLiteJournal(tmp_path / "j.db") as journal:
        for i in range(5):
            await create(journal, f"x{i}")
        commits = journal.stats.commits
        holder.take()
        appends = [asyncio.create_task(journal.append(f"x{i}", 1, attempt())) for i in range(5)]
        await asyncio.sleep(0.3)
        assert not any(task.done() for task in appends), "a write went ahead of the turn"
        assert journal.stats.commits == commits
        holder.give_back()
        assert await asyncio.gather(*appends) == [2] * 5
        assert journal.stats.commits == commits + 1  # the five queued behind one turn
        assert journal.stats.turn_waits == 1


async def test_turn_kept_too_long_is_unavailable_and_given_back_once_late(
    tmp_path: Path, holder: TurnHolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writer, "LOCK_RETRY_FOR", 0.2)
    async with SQLiteJournal(tmp_path / "j.db") as journal:
        await create(journal, "x")
        holder.take()
        with pytest.raises(JournalUnavailable, match=r"kept the write lock for 0\.2 s"):
            await journal.append("x", 1, attempt())
        holder.give_back()
        # The writer's helper gets the turn after its writer stopped waiting: it must not
        # keep it while that writer is idle.
        await asyncio.sleep(0.2)
        assert holder.take(block=False), "an idle writer kept the turn"
        holder.give_back()
        assert await journal.append("x", 1, attempt(3.0)) == 2


async def test_close_while_waiting_for_a_turn(tmp_path: Path, holder: TurnHolder,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_writer, "LOCK_RETRY_FOR", 0.2)
    journal = SQLiteJournal(tmp_path / "j.db")
    await journal.open()
    await create(journal, "x")
    holder.take()
    with pytest.raises(JournalUnavailable):
        await journal.append("x", 1, attempt())
    await asyncio.wait_for(journal.close(), 5)  # its helper is still blocked in flock
    holder.give_back()
    await asyncio.sleep(0.2)
    assert holder.take(block=False), "a closed journal's helper kept the turn"


async def test_two_writers_in_one_process_take_turns(tmp_path: Path) -> None:
    # busy_timeout=0: had both writers raced for SQLite's lock, the loser would retry
    # (lock_retries) at once. Taking turns, neither ever finds the file locked.
    path = tmp_path / "j.db"
    async with SQLiteJournal(path, busy_timeout=0) as one, \
            SQLiteJournal(path, busy_timeout=0) as two:
        ids = [f"e{i}" for i in range(200)]
        await asyncio.gather(*(create(one if i % 2 else two, e) for i, e in enumerate(ids)))
        await asyncio.gather(*(
            (one if i % 2 else two).append(e, 1, attempt()) for i, e in enumerate(ids)))
        assert (one.stats.lock_retries, two.stats.lock_retries) == (0, 0)
        assert one.stats.turn_waits + two.stats.turn_waits > 0
        rows = await asyncio.gather(*(one.get_execution(e) for e in ids))
        assert all(row is not None and row.last_seq == 2 for row in rows)


async def test_unusable_side_file_leaves_sqlite_to_arbitrate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j.db"
    turns_path(path).mkdir()  # cannot be opened for writing
    with caplog.at_level(logging.WARNING):
        async with SQLiteJournal(path) as journal:
            await create(journal, "x")
            assert await journal.append("x", 1, attempt()) == 2
            assert journal.stats.turn_waits == 0
    assert any("writers will not take turns" in r.getMessage() and str(turns_path(path))
               in r.getMessage() for r in caplog.records), caplog.text


async def test_turn_of_a_killed_process_passes_on(tmp_path: Path) -> None:
    # A writer process killed in its turn: the kernel lets its flock go with it.
    path = tmp_path / "j.db"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(turns_path(path))!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n",
        stdout=asyncio.subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"held\n"
        async with SQLiteJournal(path) as journal:
            creating = asyncio.create_task(create(journal, "x"))
            await asyncio.sleep(0.3)
            assert not creating.done(), "wrote while another process held the turn"
            holder.kill()
            await asyncio.wait_for(creating, 5)
            assert journal.stats.turn_waits == 1
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()


async def test_a_failing_flock_leaves_sqlite_to_arbitrate(
    tmp_path: Path, holder: TurnHolder, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX:  # the helper's blocking wait
            raise OSError(errno.ENOLCK, "No locks available")
        real_flock(fd, operation)

    async with SQLiteJournal(tmp_path / "j.db") as journal:
        await create(journal, "x")
        holder.take()
        # fcntl is one module: patched after the holder took its turn with the real one.
        monkeypatch.setattr(sqlite_turns.fcntl, "flock", flock)
        with caplog.at_level(logging.WARNING):
            assert await asyncio.wait_for(journal.append("x", 1, attempt()), 5) == 2
        assert await journal.append("x", 2, attempt(3.0)) == 3
    assert "writers go on without them" in caplog.text
