"""Real files, real processes: concurrent writers and writers killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from coordinator.core.events import (
    ExecutionStarted,
    HostAssigned,
    StepAttemptStarted,
    event_from_json,
)
from coordinator.journal.base import NewExecution
from coordinator.journal.sqlite import SQLiteJournal

WORKER = Path(__file__).with_name("journal_worker.py")
REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0


async def spawn(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )


async def start_together(procs: list[asyncio.subprocess.Process]) -> None:
    """Wait until every worker has opened the journal, then release them at once."""
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        assert line == b"ready\n", line
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()


async def finish(proc: asyncio.subprocess.Process) -> str:
    out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, out
    return out.decode()


def verify(db: Path) -> dict[str, int]:
    """Check the file is intact and every history gapless (blocking); return each last_seq."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        last_seqs = dict(conn.execute("SELECT execution_id, last_seq FROM executions").fetchall())
        histories: dict[str, list[int]] = {}
        for execution_id, seq, data in conn.execute(
            "SELECT execution_id, seq, data FROM events ORDER BY execution_id, seq"
        ):
            event_from_json(data)  # no torn payload
            histories.setdefault(execution_id, []).append(seq)
    finally:
        conn.close()
    assert histories.keys() == last_seqs.keys(), "events without an execution, or the reverse"
    for execution_id, last_seq in last_seqs.items():
        assert histories[execution_id] == list(range(1, last_seq + 1)), execution_id
    return last_seqs


async def test_processes_writing_different_executions(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    procs = [await spawn("disjoint", str(db), f"p{i}", "15", "10") for i in range(4)]
    await start_together(procs)
    for proc in procs:
        assert (await finish(proc)).strip() == "done"
    last_seqs = await asyncio.to_thread(verify, db)
    assert sorted(last_seqs) == sorted(f"p{i}-{n}" for i in range(4) for n in range(15))
    assert set(last_seqs.values()) == {21}


async def test_processes_racing_on_one_execution_never_fork(tmp_path: Path) -> None:
    db = tmp_path / "race.db"
    async with SQLiteJournal(db) as journal:
        started = ExecutionStarted(at=time.time(), execution_id="x", saga="s", version=1, input=0)
        await journal.create_execution(NewExecution("x", "s", 1, time.time()), [started])
    writers, appends = 4, 25
    procs = [await spawn("race", str(db), "x", f"w{i}", str(appends)) for i in range(writers)]
    await start_together(procs)
    conflicts = [int((await finish(proc)).split()[1]) for proc in procs]

    assert await asyncio.to_thread(verify, db) == {"x": 1 + writers * appends}
    async with SQLiteJournal(db) as journal:
        hosts = [s.event.host for s in await journal.read("x") if isinstance(s.event, HostAssigned)]
    # Every acknowledged append is in the one history, once, in the writer's own order.
    for i in range(writers):
        mine = [h for h in hosts if h.startswith(f"w{i}:")]
        assert mine == [f"w{i}:{k}" for k in range(1, appends + 1)]
    print(f"race: {sum(conflicts)} conflicts rejected")


async def run_until_killed(db: Path, prefix: str, acks_wanted: int) -> dict[str, int]:
    """Run a crash worker, SIGKILL it mid-load; return the highest acked seq per execution."""
    proc = await spawn("crash", str(db), prefix, "24")
    await start_together([proc])
    assert proc.stdout is not None
    acked: dict[str, int] = {}

    def note(line: bytes) -> None:
        if line.startswith(b"ack "):
            _, execution_id, seq = line.decode().split()
            acked[execution_id] = max(acked.get(execution_id, 0), int(seq))

    acks = 0
    while acks < acks_wanted:
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        assert line, "the worker stopped early"
        note(line)
        acks += 1
    proc.send_signal(signal.SIGKILL)
    for line in (await asyncio.wait_for(proc.stdout.read(), TIMEOUT)).splitlines(keepends=True):
        if line.endswith(b"\n"):  # a line cut by the kill was never fully acknowledged
            note(line)
    assert await proc.wait() == -signal.SIGKILL
    return acked


def unfinished(db: Path, prefix: str) -> int:
    conn = sqlite3.connect(db)
    try:
        (count,) = conn.execute(
            "SELECT count(*) FROM executions WHERE execution_id LIKE ? AND status != 'completed'",
            (f"{prefix}-%",),
        ).fetchone()
    finally:
        conn.close()
    return int(count)


def assert_acked_writes_survived(last_seqs: dict[str, int], acked: dict[str, int]) -> None:
    for execution_id, seq in acked.items():
        assert last_seqs.get(execution_id, 0) >= seq, (execution_id, seq)


async def test_sigkill_mid_load_leaves_a_consistent_journal(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    acked: dict[str, int] = {}
    previous: str | None = None
    # Each round's process recovers the file, first finishes the executions its killed
    # predecessor left running, then is killed in the middle of its own load.
    for prefix in ("a", "b", "c"):
        for execution_id, seq in (await run_until_killed(db, prefix, 500)).items():
            acked[execution_id] = max(acked.get(execution_id, 0), seq)
        assert_acked_writes_survived(await asyncio.to_thread(verify, db), acked)
        if previous is not None:
            assert await asyncio.to_thread(unfinished, db, previous) == 0, (
                "the predecessor's executions were not resumed"
            )
        previous = prefix

    # Reopened in this process, the journal takes appends and creates again.
    async with SQLiteJournal(db) as journal:
        live = await journal.non_terminal()
        assert live, "a killed worker leaves unfinished executions behind"
        for row in live:
            event = StepAttemptStarted(at=time.time(), step="after", attempt=1)
            assert await journal.append(row.execution_id, row.last_seq, [event]) == row.last_seq + 1
        started = ExecutionStarted(at=time.time(), execution_id="c", saga="s", version=1, input=0)
        created = await journal.create_execution(NewExecution("c", "s", 1, time.time()), [started])
        assert created.created
    final = await asyncio.to_thread(verify, db)
    assert final["c"] == 1
    for row in live:
        assert final[row.execution_id] == row.last_seq + 1
