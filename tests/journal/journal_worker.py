"""A separate writer process for the durability tests (run as a script, not collected).

    journal_worker.py disjoint DB PREFIX EXECUTIONS APPENDS
    journal_worker.py race DB EXECUTION_ID WRITER APPENDS
    journal_worker.py crash DB PREFIX WORKERS
    journal_worker.py claim URL EXECUTION_ID OWNER LEASE_UNTIL NOW

Each prints ``ready``, then waits for a line on stdin before writing, so that the
test can start several processes at the same moment. ``crash`` never ends: it
prints ``ack EXECUTION_ID SEQ`` after each acknowledged write until it is killed.
``claim`` takes any journal URL (SQLite or PostgreSQL) and prints ``fence N`` or
``refused``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from itertools import count

from coordinator.core.events import (
    Event,
    ExecutionCompleted,
    ExecutionStarted,
    HostAssigned,
    StepAttemptStarted,
    StepAttemptSucceeded,
)
from coordinator.journal.base import Journal, NewExecution, SequenceConflict
from coordinator.journal.factory import journal_from_url
from coordinator.journal.sqlite import SQLiteJournal


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def create(journal: SQLiteJournal, execution_id: str, saga: str = "load") -> None:
    now = time.time()
    started = ExecutionStarted(
        at=now, execution_id=execution_id, saga=saga, version=1, input={"id": execution_id}
    )
    await journal.create_execution(NewExecution(execution_id, saga, 1, now), [started])


def step_events(k: int) -> list[Event]:
    now = time.time()
    return [
        StepAttemptStarted(at=now, step=f"s{k}", attempt=1),
        StepAttemptSucceeded(at=now, step=f"s{k}", attempt=1, output={"k": k, "pad": "x" * 200}),
    ]


async def disjoint(journal: SQLiteJournal, prefix: str, executions: int, appends: int) -> None:
    async def one(n: int) -> None:
        execution_id = f"{prefix}-{n}"
        await create(journal, execution_id)
        last = 1
        for k in range(appends):
            last = await journal.append(execution_id, last, step_events(k))

    await asyncio.gather(*(one(n) for n in range(executions)))
    say("done")


async def race(journal: SQLiteJournal, execution_id: str, writer: str, appends: int) -> None:
    conflicts = 0
    k = 1
    while k <= appends:
        row = await journal.get_execution(execution_id)
        assert row is not None
        try:
            await journal.append(
                execution_id, row.last_seq, [HostAssigned(at=time.time(), host=f"{writer}:{k}")]
            )
        except SequenceConflict:
            conflicts += 1
            continue
        k += 1
    say(f"conflicts {conflicts}")


async def crash(journal: SQLiteJournal, prefix: str, workers: int) -> None:
    # Executions a killed predecessor left unfinished are continued first.
    leftovers = [row.execution_id for row in await journal.non_terminal()]
    ids = count()

    async def worker(w: int) -> None:
        while True:
            if leftovers:
                execution_id = leftovers.pop()
            else:
                execution_id = f"{prefix}-{w}-{next(ids)}"
                await create(journal, execution_id)
                say(f"ack {execution_id} 1")
            await finish(journal, execution_id)

    await asyncio.gather(*(worker(w) for w in range(workers)))


async def finish(journal: SQLiteJournal, execution_id: str) -> None:
    row = await journal.get_execution(execution_id)
    assert row is not None
    last = row.last_seq
    for k in range(4):
        last = await journal.append(execution_id, last, step_events(k))
        say(f"ack {execution_id} {last}")
    last = await journal.append(
        execution_id, last, [ExecutionCompleted(at=time.time(), output={"n": last})], "completed"
    )
    say(f"ack {execution_id} {last}")


async def claim(journal: Journal, execution_id: str, owner: str, lease: str, now: str) -> None:
    fence = await journal.claim(execution_id, owner, float(lease), float(now))
    say("refused" if fence is None else f"fence {fence}")


async def main(argv: list[str]) -> None:
    mode, db, *args = argv
    if mode == "claim":
        store = journal_from_url(db)
        await store.open()
        try:
            say("ready")
            await asyncio.to_thread(sys.stdin.readline)
            await claim(store, *args)
        finally:
            await store.close()
        return
    async with SQLiteJournal(db, batch_window=0.001) as journal:
        say("ready")
        await asyncio.to_thread(sys.stdin.readline)
        if mode == "disjoint":
            await disjoint(journal, args[0], int(args[1]), int(args[2]))
        elif mode == "race":
            await race(journal, args[0], args[1], int(args[2]))
        elif mode == "crash":
            await crash(journal, args[0], int(args[1]))
        else:
            raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
