"""The journal contract, run against every store in ``conftest.STORES``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coordinator.core.events import (
    CompensationSucceeded,
    CompensationTriggered,
    Event,
    ExecutionCompensated,
    ExecutionCompleted,
    ExecutionStarted,
    HostAssigned,
    RetryScheduled,
    StepAttemptFailed,
    StepAttemptStarted,
    StepAttemptSucceeded,
)
from coordinator.journal.base import (
    ExecutionRow,
    Journal,
    JournalError,
    NewExecution,
    SequenceConflict,
)

T0 = 1_700_000_000.0


def started(execution_id: str, saga: str = "order", at: float = T0) -> ExecutionStarted:
    return ExecutionStarted(
        at=at, execution_id=execution_id, saga=saga, version=1, input={"id": execution_id}
    )


def step(n: int, at: float = T0) -> StepAttemptStarted:
    return StepAttemptStarted(at=at + n, step=f"s{n}", attempt=1)


async def create(
    journal: Journal,
    execution_id: str,
    *,
    saga: str = "order",
    created_at: float = T0,
    key: str | None = None,
    events: list[Event] | None = None,
) -> ExecutionRow:
    execution = NewExecution(execution_id, saga, 1, created_at, idempotency_key=key)
    result = await journal.create_execution(
        execution, events if events is not None else [started(execution_id, saga, created_at)]
    )
    return result.row


async def seqs(journal: Journal, execution_id: str) -> list[int]:
    return [stored.seq for stored in await journal.read(execution_id)]


async def test_create_and_read_round_trip(journal: Journal) -> None:
    first: list[Event] = [
        ExecutionStarted(
            at=T0,
            execution_id="x1",
            saga="order",
            version=3,
            input={"items": [1, 2.5, "three", None], "nested": {"ok": True}},
            deadline=T0 + 60,
            trace={"traceparent": "00-abc-def-01"},
        ),
        HostAssigned(at=T0 + 0.5, host="host-a", node_id="n1"),
    ]
    later: list[Event] = [
        StepAttemptStarted(at=T0 + 1, step="reserve", attempt=1),
        StepAttemptSucceeded(at=T0 + 2, step="reserve", attempt=1, status_code=200, output=[1]),
        StepAttemptFailed(
            at=T0 + 3,
            step="charge",
            attempt=1,
            outcome="retryable",
            retry_allowed=True,
            error="503",
            retry_after=1.5,
        ),
        RetryScheduled(at=T0 + 4, step="charge", phase="action", attempt=2, due=T0 + 5.5),
        CompensationTriggered(at=T0 + 6, step="charge", error="gave up"),
        CompensationSucceeded(at=T0 + 7, step="reserve", attempt=1, status_code=204),
        ExecutionCompensated(at=T0 + 8, reason="step_failed", error="gave up"),
    ]
    execution = NewExecution("x1", "order", 3, T0, idempotency_key="k1", request_hash="h1")
    result = await journal.create_execution(execution, first)
    assert result.created
    assert await journal.append("x1", 2, later, status="compensated") == 9

    stored = await journal.read("x1")
    assert [s.seq for s in stored] == list(range(1, 10))
    assert [s.event for s in stored] == first + later
    assert [s.seq for s in await journal.read("x1", after_seq=7)] == [8, 9]
    assert stored[0].as_json_dict()["seq"] == 1

    row = await journal.get_execution("x1")
    assert row is not None
    assert (row.saga, row.version, row.status, row.last_seq) == ("order", 3, "compensated", 9)
    assert (row.idempotency_key, row.request_hash) == ("k1", "h1")
    assert row.created_at == T0
    assert row.updated_at == T0 + 8  # the last event's time
    assert result.row.status == "running" and result.row.last_seq == 2


async def test_unknown_execution_reads_empty(journal: Journal) -> None:
    assert await journal.read("nope") == []
    assert await journal.get_execution("nope") is None
    with pytest.raises(JournalError):
        await journal.append("nope", 0, [step(1)])
    await journal.ping()


async def test_sequences_are_gapless(journal: Journal) -> None:
    await create(journal, "g1")
    last = 1
    for size in (1, 3, 2, 5):
        last = await journal.append("g1", last, [step(n) for n in range(size)])
    assert last == 12
    assert await seqs(journal, "g1") == list(range(1, 13))


async def test_stale_append_conflicts_and_stores_nothing(journal: Journal) -> None:
    await create(journal, "c1")
    await journal.append("c1", 1, [step(1)])
    before = await journal.get_execution("c1")
    for stale in (0, 1, 5):
        with pytest.raises(SequenceConflict):
            await journal.append("c1", stale, [step(7), step(8)], status="failed")
    assert await seqs(journal, "c1") == [1, 2]
    assert await journal.get_execution("c1") == before


async def test_concurrent_appenders_at_same_seq_one_wins(journal: Journal) -> None:
    await create(journal, "r1")
    results = await asyncio.gather(
        *(journal.append("r1", 1, [HostAssigned(at=T0, host=f"h{i}")]) for i in range(5)),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if r == 2]
    assert len(winners) == 1
    losers = [r for r in results if r != 2]
    assert len(losers) == 4 and all(isinstance(r, SequenceConflict) for r in losers)
    stored = await journal.read("r1")
    assert [s.seq for s in stored] == [1, 2]
    assert stored[1].event == HostAssigned(at=T0, host=f"h{winners[0]}")


async def test_conflict_does_not_spoil_concurrent_appends(journal: Journal) -> None:
    ids = [f"m{i}" for i in range(40)]
    await asyncio.gather(*(create(journal, i) for i in ids))
    good = [journal.append(i, 1, [step(1)]) for i in ids]
    stale = [journal.append(i, 0, [step(9)]) for i in ids]
    results = await asyncio.gather(
        *(x for pair in zip(good, stale, strict=True) for x in pair), return_exceptions=True
    )
    assert results[0::2] == [2] * len(ids)
    assert all(isinstance(r, SequenceConflict) for r in results[1::2])
    for i in ids:
        assert [s.event for s in await journal.read(i, after_seq=1)] == [step(1)]


async def test_idempotent_create_returns_existing(journal: Journal) -> None:
    first = await journal.create_execution(
        NewExecution("i1", "order", 1, T0, idempotency_key="key", request_hash="h"),
        [started("i1")],
    )
    await journal.append("i1", 1, [step(1)])
    again = await journal.create_execution(
        NewExecution("i2", "order", 1, T0 + 1, idempotency_key="key", request_hash="other"),
        [started("i2")],
    )
    assert first.created and not again.created
    assert again.row == await journal.get_execution("i1")
    assert again.row.last_seq == 2
    assert await journal.get_execution("i2") is None
    assert await journal.read("i2") == []
    # The key is scoped to its saga.
    other = await create(journal, "i3", saga="refund", key="key")
    assert other.execution_id == "i3"


async def test_concurrent_idempotent_creates_create_once(journal: Journal) -> None:
    results = await asyncio.gather(
        *(
            journal.create_execution(
                NewExecution(f"k{i}", "order", 1, T0, idempotency_key="same"), [started(f"k{i}")]
            )
            for i in range(6)
        )
    )
    assert sum(r.created for r in results) == 1
    assert len({r.row.execution_id for r in results}) == 1


async def test_duplicate_execution_id_conflicts(journal: Journal) -> None:
    await create(journal, "d1")
    with pytest.raises(SequenceConflict):
        await create(journal, "d1", saga="other", events=[started("d1"), step(1)])
    assert await seqs(journal, "d1") == [1]
    row = await journal.get_execution("d1")
    assert row is not None and row.saga == "order"


async def test_status_updates(journal: Journal) -> None:
    await create(journal, "s1")
    assert (await status_of(journal, "s1")) == "running"
    await journal.append("s1", 1, [CompensationTriggered(at=T0 + 1)], status="compensating")
    assert (await status_of(journal, "s1")) == "compensating"
    await journal.append("s1", 2, [step(2)])  # no status: unchanged
    assert (await status_of(journal, "s1")) == "compensating"
    await journal.append("s1", 3, [ExecutionCompleted(at=T0 + 9)], status="completed")
    assert (await status_of(journal, "s1")) == "completed"


async def status_of(journal: Journal, execution_id: str) -> str:
    row = await journal.get_execution(execution_id)
    assert row is not None
    return row.status


async def test_listing_order_and_filters(journal: Journal) -> None:
    # Pairs share created_at, so the order falls back to the id (descending).
    specs: list[tuple[str, str, float]] = [
        (f"l{i:02d}", "order" if i % 3 else "refund", T0 + i // 2) for i in range(12)
    ]
    for execution_id, saga, created_at in specs:
        await create(journal, execution_id, saga=saga, created_at=created_at)
    for execution_id in ("l03", "l06"):
        await journal.append(execution_id, 1, [ExecutionCompleted(at=T0 + 20)], "completed")

    everything = await journal.list_executions(limit=100)
    expected = sorted(specs, key=lambda s: (s[2], s[0]), reverse=True)
    assert [r.execution_id for r in everything.items] == [s[0] for s in expected]
    assert everything.next_cursor is None

    refunds = await journal.list_executions(saga="refund")
    assert [r.execution_id for r in refunds.items] == ["l09", "l06", "l03", "l00"]
    completed = await journal.list_executions(status="completed")
    assert [r.execution_id for r in completed.items] == ["l06", "l03"]
    both = await journal.list_executions(saga="refund", status="running")
    assert [r.execution_id for r in both.items] == ["l09", "l00"]
    assert (await journal.list_executions(saga="nothing")).items == []


async def test_paging_is_stable_while_inserting(journal: Journal) -> None:
    originals = {f"p{i:02d}" for i in range(25)}
    for i, execution_id in enumerate(sorted(originals)):
        await create(journal, execution_id, created_at=T0 + i // 3)
    seen: list[ExecutionRow] = []
    cursor: str | None = None
    newer: set[str] = set()
    for page_no in range(100):
        page = await journal.list_executions(limit=4, cursor=cursor)
        seen.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        # Newer executions (later time, or the same time as the last item but a
        # greater id) land before the cursor and must not show up in later pages.
        last = page.items[-1]
        for execution_id, created_at in (
            (f"n{page_no}", T0 + 1000 + page_no),
            (last.execution_id + "z", last.created_at),
        ):
            await create(journal, execution_id, created_at=created_at)
            newer.add(execution_id)
    ids = [r.execution_id for r in seen]
    assert len(ids) == len(set(ids)), "an execution was listed twice"
    assert set(ids) == originals, "an execution was skipped or a newer one leaked in"
    keys = [(r.created_at, r.execution_id) for r in seen]
    assert keys == sorted(keys, reverse=True)
    first_page = await journal.list_executions(limit=4)
    assert {r.execution_id for r in first_page.items} <= newer


async def test_invalid_cursor_is_rejected(journal: Journal) -> None:
    with pytest.raises(ValueError):
        await journal.list_executions(cursor="!!not-a-cursor!!")


async def test_non_terminal(journal: Journal) -> None:
    for execution_id in ("t1", "t2", "t3", "t4"):
        await create(journal, execution_id)
    await journal.append("t1", 1, [ExecutionCompleted(at=T0 + 1)], "completed")
    await journal.append("t2", 1, [CompensationTriggered(at=T0 + 1)], "compensating")
    await journal.append("t3", 1, [ExecutionCompensated(at=T0 + 2, reason="cancelled")], "failed")
    live = await journal.non_terminal()
    assert sorted(r.execution_id for r in live) == ["t2", "t4"]


async def test_many_concurrent_appends_are_group_committed(journal: Journal) -> None:
    executions, events_each = 200, 10
    stats: Any = getattr(journal, "stats", None)
    assert stats is not None, "stores expose stats.requests and stats.commits"
    requests_before, commits_before = stats.requests, stats.commits

    async def run(n: int) -> None:
        execution_id = f"bulk{n:03d}"
        await create(journal, execution_id)
        last = 1
        for k in range(1, events_each):
            last = await journal.append(execution_id, last, [step(k)])

    await asyncio.gather(*(run(n) for n in range(executions)))
    for n in range(executions):
        stored = await journal.read(f"bulk{n:03d}")
        assert [s.seq for s in stored] == list(range(1, events_each + 1))
        assert [s.event for s in stored[1:]] == [step(k) for k in range(1, events_each)]
    requests = stats.requests - requests_before
    commits = stats.commits - commits_before
    assert requests == executions * events_each
    print(f"group commit: {requests} requests in {commits} commits")
    assert commits < requests / 2, f"{commits} commits for {requests} requests: no batching"


class Recorder:
    """A write observer that keeps what it is told (the host's metrics count the same)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.latencies: list[float] = []

    def journal_committed(self, batch_size: int) -> None:
        self.batches.append(batch_size)

    def journal_appended(self, seconds: float) -> None:
        self.latencies.append(seconds)


async def test_a_write_observer_sees_every_commit_and_request(journal: Journal) -> None:
    recorder = Recorder()
    journal.observe(recorder)  # type: ignore[attr-defined]
    await asyncio.gather(*(create(journal, f"w{n}") for n in range(20)))
    await asyncio.gather(*(journal.append(f"w{n}", 1, [step(1)]) for n in range(20)))
    assert sum(recorder.batches) == 40 and len(recorder.latencies) == 40
    assert len(recorder.batches) < 40, "concurrent writes share commits"
    assert all(0 <= seconds < 60 for seconds in recorder.latencies)
