"""The journal contract of ownership, leases and fencing, run against every store in
``conftest.STORES`` (the rest of the contract is in ``test_contract.py``).

Times are explicit (``now`` is an argument), so no test sleeps or reads a clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coordinator.core.events import (
    CompensationTriggered,
    ExecutionCompleted,
    HostAssigned,
)
from coordinator.journal.base import (
    ExecutionRow,
    FencedOut,
    Journal,
    NewExecution,
    SequenceConflict,
)
from coordinator.journal.factory import journal_from_url
from tests.journal.test_contract import T0, create, seqs, started, step
from tests.journal.test_sqlite_durability import finish, spawn, start_together

LEASE = T0 + 10  # leases in these tests run out at LEASE; "later" is any time after it
LATER = LEASE + 1


async def row_of(journal: Journal, execution_id: str) -> ExecutionRow:
    row = await journal.get_execution(execution_id)
    assert row is not None
    return row


async def lease_of(journal: Journal, execution_id: str) -> tuple[str | None, float | None, int]:
    row = await row_of(journal, execution_id)
    return row.owner, row.lease_until, row.fence


async def owned(journal: Journal, execution_id: str, owner: str = "a") -> int:
    """Create ``execution_id`` and claim it for ``owner`` until LEASE; its fence."""
    await create(journal, execution_id)
    fence = await journal.claim(execution_id, owner, LEASE, T0)
    assert fence is not None
    return fence


async def test_claim_of_an_unowned_execution(journal: Journal) -> None:
    row = await create(journal, "u1")
    assert (row.owner, row.lease_until, row.fence) == (None, None, 0)
    assert await journal.claim("u1", "a", LEASE, T0) == 1
    assert await lease_of(journal, "u1") == ("a", LEASE, 1)


async def test_live_lease_refuses_another_owner(journal: Journal) -> None:
    await owned(journal, "l1")
    assert await journal.claim("l1", "b", LATER + 10, T0 + 5) is None
    # Expired means lease_until < now: at the very instant it ends, it still holds.
    assert await journal.claim("l1", "b", LATER + 10, LEASE) is None
    assert await lease_of(journal, "l1") == ("a", LEASE, 1)


async def test_takeover_after_expiry_fences_out_the_old_owner(journal: Journal) -> None:
    old = await owned(journal, "f1")
    assert await journal.append("f1", 1, [step(1)], fence=old) == 2
    new = await journal.claim("f1", "b", LATER + 10, LATER)
    assert new == old + 1
    before = await row_of(journal, "f1")

    # The paused owner wakes up: with the right seq, with a stale one, with a status.
    for after_seq in (2, 1, 7):
        with pytest.raises(FencedOut):
            await journal.append("f1", after_seq, [step(9)], "completed", fence=old)
    assert await seqs(journal, "f1") == [1, 2]
    assert await row_of(journal, "f1") == before

    # The new owner's stale seq is a plain sequence conflict, not a fence problem.
    with pytest.raises(SequenceConflict) as conflict:
        await journal.append("f1", 1, [step(2)], fence=new)
    assert not isinstance(conflict.value, FencedOut)
    assert await journal.append("f1", 2, [step(2)], fence=new) == 3
    # Without a fence (the API, tests) nothing changed.
    assert await journal.append("f1", 3, [step(3)]) == 4
    assert await seqs(journal, "f1") == [1, 2, 3, 4]


async def test_reclaim_by_the_same_owner_bumps_the_fence(journal: Journal) -> None:
    first = await owned(journal, "s1")
    # A restarted host with the same id, while its former incarnation's lease is live.
    second = await journal.claim("s1", "a", LEASE + 5, T0 + 1)
    assert second == first + 1
    assert await lease_of(journal, "s1") == ("a", LEASE + 5, second)
    with pytest.raises(FencedOut):
        await journal.append("s1", 1, [step(1)], fence=first)
    assert await journal.append("s1", 1, [step(1)], fence=second) == 2


async def test_claim_refuses_ended_and_unknown_executions(journal: Journal) -> None:
    fence = await owned(journal, "e1")
    await journal.append("e1", 1, [ExecutionCompleted(at=T0 + 1)], "completed", fence=fence)
    assert await journal.claim("e1", "a", LATER, T0 + 2) is None
    assert await journal.claim("e1", "b", LATER + 10, LATER) is None
    assert await journal.claim("nope", "a", LEASE, T0) is None
    assert await journal.get_execution("nope") is None


async def test_create_with_an_owner(journal: Journal) -> None:
    made = await journal.create_execution(
        NewExecution("o1", "order", 1, T0, idempotency_key="k"), [started("o1")], "a", LEASE
    )
    assert (made.row.owner, made.row.lease_until, made.row.fence) == ("a", LEASE, 1)
    assert made.row == await journal.get_execution("o1")
    assert await journal.claim("o1", "b", LATER, T0 + 1) is None
    assert await journal.append("o1", 1, [step(1)], fence=1) == 2
    # An idempotent repeat returns the execution as it is, ownership included.
    again = await journal.create_execution(
        NewExecution("o2", "order", 1, T0, idempotency_key="k"),
        [started("o2")],
        owner="b",
        lease_until=LATER,
    )
    assert not again.created and again.row == await journal.get_execution("o1")
    assert (again.row.owner, again.row.fence) == ("a", 1)
    for owner, lease_until in (("a", None), (None, LEASE)):
        with pytest.raises(ValueError):
            await journal.create_execution(
                NewExecution("o3", "order", 1, T0), [started("o3")], owner, lease_until
            )
    assert await journal.get_execution("o3") is None


async def test_renew_extends_exactly_the_matching_leases(journal: Journal) -> None:
    held: dict[str, int] = {}
    for execution_id in ("r-ok1", "r-ok2", "r-stale", "r-taken", "r-ended", "r-released"):
        held[execution_id] = await owned(journal, execution_id)
    held["r-unknown"] = 1
    held["r-stale"] -= 1  # a fence from before a claim we (a) forgot about
    new = await journal.claim("r-taken", "b", LATER + 10, LATER)
    assert new is not None
    await journal.append("r-ended", 1, [ExecutionCompleted(at=T0)], "completed")
    await journal.release("r-released", "a", held["r-released"])
    await owned(journal, "r-other", owner="b")  # b's, and not asked for
    untouched = {i: await lease_of(journal, i) for i in held.keys() - {"r-unknown"} | {"r-other"}}

    renewed = await journal.renew("a", held, LATER + 20)
    assert renewed == {"r-ok1", "r-ok2"}
    for execution_id in renewed:
        assert await lease_of(journal, execution_id) == ("a", LATER + 20, held[execution_id])
    for execution_id, lease in untouched.items():
        if execution_id not in renewed:
            assert await lease_of(journal, execution_id) == lease, execution_id
    # An expired lease nobody took over is still ours to renew: the fence decides.
    assert await journal.renew("a", {"r-ok1": held["r-ok1"]}, LATER + 30) == {"r-ok1"}
    assert await journal.renew("b", {"r-taken": new}, LATER + 30) == {"r-taken"}
    assert await journal.renew("a", {}, LATER) == set()


async def test_renewing_a_thousand_leases_is_one_write(journal: Journal) -> None:
    ids = [f"bulk{n:04d}" for n in range(1000)]
    await asyncio.gather(
        *(
            journal.create_execution(NewExecution(i, "order", 1, T0), [started(i)], "a", LEASE)
            for i in ids
        )
    )
    stats: Any = getattr(journal, "stats", None)
    assert stats is not None, "stores expose stats.requests and stats.commits"
    requests_before, commits_before = stats.requests, stats.commits
    fences = dict.fromkeys(ids, 1) | {"bulk0007": 2}  # one stale fence among them
    renewed = await journal.renew("a", fences, LATER)
    assert (stats.requests - requests_before, stats.commits - commits_before) == (1, 1)
    assert renewed == set(ids) - {"bulk0007"}
    assert await lease_of(journal, "bulk0999") == ("a", LATER, 1)
    assert await lease_of(journal, "bulk0007") == ("a", LEASE, 1)


async def test_release(journal: Journal) -> None:
    fence = await owned(journal, "rel1")
    await journal.release("rel1", "a", fence + 1)  # a stale token releases nothing
    await journal.release("rel1", "b", fence)  # nor does someone else
    await journal.release("nope", "a", fence)
    assert await lease_of(journal, "rel1") == ("a", LEASE, fence)
    await journal.release("rel1", "a", fence)
    assert await lease_of(journal, "rel1") == (None, None, fence)
    # Free for anyone now, and the next claim still fences the releaser out.
    assert await journal.claim("rel1", "b", LEASE, T0 + 1) == fence + 1
    with pytest.raises(FencedOut):
        await journal.append("rel1", 1, [step(1)], fence=fence)


async def test_expired_lists_unowned_and_expired_oldest_lease_first(journal: Journal) -> None:
    await create(journal, "x-unowned", created_at=T0 + 3)
    for execution_id, lease_until in (("x-late", T0 + 8), ("x-early", T0 + 2), ("x-live", LATER)):
        await create(journal, execution_id)
        assert await journal.claim(execution_id, "a", lease_until, T0) == 1
    await owned(journal, "x-ended")
    await journal.append("x-ended", 1, [ExecutionCompleted(at=T0)], "completed")
    await create(journal, "x-ended-unowned")
    await journal.append("x-ended-unowned", 1, [ExecutionCompleted(at=T0)], "failed")
    await create(journal, "x-compensating")
    await journal.append("x-compensating", 1, [CompensationTriggered(at=T0)], "compensating")

    found = await journal.expired(now=LEASE)
    assert [r.execution_id for r in found] == ["x-compensating", "x-unowned", "x-early", "x-late"]
    assert [(r.owner, r.lease_until, r.fence) for r in found[2:]] == [
        ("a", T0 + 2, 1),
        ("a", T0 + 8, 1),
    ]
    assert [r.execution_id for r in await journal.expired(now=LEASE, limit=3)] == [
        "x-compensating",
        "x-unowned",
        "x-early",
    ]
    assert [r.execution_id for r in await journal.expired(now=T0)] == [
        "x-compensating",
        "x-unowned",
    ]
    with pytest.raises(ValueError):
        await journal.expired(now=T0, limit=0)


async def test_terminal_append_clears_the_lease(journal: Journal) -> None:
    fence = await owned(journal, "t1")
    await journal.append("t1", 1, [CompensationTriggered(at=T0)], "compensating", fence=fence)
    assert await lease_of(journal, "t1") == ("a", LEASE, fence)  # not terminal: kept
    await journal.append("t1", 2, [ExecutionCompleted(at=T0)], "compensated", fence=fence)
    row = await row_of(journal, "t1")
    assert (row.status, row.owner, row.lease_until, row.fence) == ("compensated", None, None, fence)
    assert await journal.expired(now=LATER) == []
    assert await journal.renew("a", {"t1": fence}, LATER) == set()


async def test_fenced_out_appends_do_not_spoil_their_batch(journal: Journal) -> None:
    ids = [f"b{n:02d}" for n in range(30)]
    old = {i: await owned(journal, i) for i in ids}
    new = {i: await journal.claim(i, "b", LATER + 10, LATER) for i in ids}
    results = await asyncio.gather(
        *(
            call
            for i in ids
            for call in (
                journal.append(i, 1, [HostAssigned(at=T0, host="a")], fence=old[i]),
                journal.append(i, 1, [HostAssigned(at=T0, host="b")], fence=new[i]),
                journal.claim(i, "c", LATER + 20, LATER),
            )
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, FencedOut) for r in results[0::3])
    assert results[1::3] == [2] * len(ids)
    assert results[2::3] == [None] * len(ids)
    for i in ids:
        assert [s.event for s in await journal.read(i, after_seq=1)] == [
            HostAssigned(at=T0, host="b")
        ]


async def test_concurrent_claims_of_an_expired_execution_one_wins(
    journal: Journal, store_url: str
) -> None:
    await owned(journal, "c1", owner="old")
    # A second journal on the same storage: its own writer and connections, as another
    # host would have, so the claims race in the database and not only in one queue.
    other = journal_from_url(store_url)
    await other.open()
    try:
        stores = [journal, other]
        results = await asyncio.gather(
            *(stores[n % 2].claim("c1", f"h{n}", LATER + 10, LATER) for n in range(8))
        )
    finally:
        await other.close()
    winners = [n for n, fence in enumerate(results) if fence is not None]
    assert len(winners) == 1, results
    assert results[winners[0]] == 2
    assert await lease_of(journal, "c1") == (f"h{winners[0]}", LATER + 10, 2)


async def test_claims_from_processes_one_wins(journal: Journal, store_url: str) -> None:
    await owned(journal, "p1", owner="old")
    procs = [
        await spawn("claim", store_url, "p1", f"proc{n}", str(LATER + 10), str(LATER))
        for n in range(3)
    ]
    await start_together(procs)
    outputs = [(await finish(proc)).strip() for proc in procs]
    assert sorted(outputs) == ["fence 2", "refused", "refused"], outputs
    winner = outputs.index("fence 2")
    assert await lease_of(journal, "p1") == (f"proc{winner}", LATER + 10, 2)


async def test_live_counts_group_non_terminal_executions_by_owner(journal: Journal) -> None:
    assert await journal.live_counts() == {}
    for execution_id in ("c1", "c2", "c3"):
        await owned(journal, execution_id, "a")
    await owned(journal, "c4", "b")
    await create(journal, "c5")
    execution = NewExecution("c6", "order", 1, T0)
    await journal.create_execution(execution, [started("c6")], owner="b", lease_until=LEASE)
    assert await journal.live_counts() == {"a": 3, "b": 2, None: 1}
    await journal.append("c1", 1, [ExecutionCompleted(at=T0 + 1)], "completed")
    await journal.append("c4", 1, [CompensationTriggered(at=T0 + 1)], "compensating")
    # A terminal append clears the owner: c1 leaves the counts; compensating is live.
    assert await journal.live_counts() == {"a": 2, "b": 2, None: 1}
