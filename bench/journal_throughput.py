"""Journal write throughput: N coroutines, each creating an execution then appending events.

    .venv/bin/python -m bench.journal_throughput --pg            # throwaway PostgreSQL
    .venv/bin/python -m bench.journal_throughput sqlite:///tmp/j.db
    .venv/bin/python -m bench.journal_throughput postgresql://u:p@host:5432/db

Each append is one request with one event and waits for the previous one (as a
runner does), so concurrency comes only from the number of executions.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from coordinator.core.events import ExecutionStarted, StepAttemptStarted
from coordinator.journal.base import Journal, NewExecution
from coordinator.journal.factory import journal_from_url


async def one_execution(journal: Journal, appends: int) -> None:
    execution_id = uuid.uuid4().hex
    now = time.time()
    started = ExecutionStarted(at=now, execution_id=execution_id, saga="bench", version=1, input={})
    await journal.create_execution(NewExecution(execution_id, "bench", 1, now), [started])
    last = 1
    for k in range(appends):
        event = StepAttemptStarted(at=time.time(), step=f"s{k}", attempt=1)
        last = await journal.append(execution_id, last, [event])


async def measure(url: str, concurrency: list[int], writes: int) -> None:
    journal = journal_from_url(url)
    await journal.open()
    try:
        await asyncio.gather(*(one_execution(journal, 5) for _ in range(10)))  # warm up
        print(f"{'executions':>10} {'writes':>7} {'writes/s':>9} {'commits':>8}")
        for n in concurrency:
            appends = max(1, writes // n - 1)
            stats: Any = getattr(journal, "stats", None)
            commits_before = stats.commits if stats else 0
            start = time.perf_counter()
            await asyncio.gather(*(one_execution(journal, appends) for _ in range(n)))
            elapsed = time.perf_counter() - start
            total = n * (appends + 1)
            commits = stats.commits - commits_before if stats else 0
            print(f"{n:>10} {total:>7} {total / elapsed:>9.0f} {commits:>8}")
    finally:
        await journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", nargs="?", help="journal URL (omit with --pg)")
    parser.add_argument("--pg", action="store_true", help="start a throwaway PostgreSQL")
    parser.add_argument("--concurrency", default="1,10,100,1000")
    parser.add_argument("--writes", type=int, default=5000, help="writes per level (about)")
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]
    if args.pg:
        from tests.pg import PgServer

        server = PgServer()
        server.start()
        try:
            asyncio.run(measure(server.url, levels, args.writes))
        finally:
            server.cleanup()
    elif args.url:
        asyncio.run(measure(args.url, levels, args.writes))
    else:
        parser.error("give a journal URL or --pg")


if __name__ == "__main__":
    main()
