"""The finish feed (host side), the completion watch (API side) and batched hand-over."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from coordinator.completions import CompletionWatch
from coordinator.finish_feed import FinishFeed
from coordinator.handover import HandOverQueue, Item


def watching(feed: FinishFeed) -> CompletionWatch:
    """A watch of one host whose feed is ``feed`` (in place of the Ray call)."""
    return CompletionWatch(lambda host, *poll: feed.since(*poll))


async def test_feed_answers_entries_past_the_cursor_and_long_polls() -> None:
    feed = FinishFeed()
    first = await feed.since(None, None, 1.0)
    assert first["complete"] and first["ids"] == [] and first["cursor"] == 0
    feed.record("a")
    answer = await feed.since(first["incarnation"], 0, 1.0)
    assert answer["ids"] == ["a"] and answer["cursor"] == 1 and answer["complete"]
    polling = asyncio.ensure_future(feed.since(first["incarnation"], 1, 5.0))
    await asyncio.sleep(0.01)
    assert not polling.done()
    feed.record("b")
    assert (await polling)["ids"] == ["b"]
    assert (await feed.since(first["incarnation"], 2, 0.01))["ids"] == []


async def test_feed_reports_lost_entries_as_incomplete() -> None:
    feed = FinishFeed(keep=2)
    for name in "abc":
        feed.record(name)
    wrapped = await feed.since(feed.incarnation, 0, 0.0)
    assert not wrapped["complete"] and wrapped["ids"] == ["b", "c"]
    restarted = await feed.since("an older incarnation", 3, 0.0)
    assert not restarted["complete"] and restarted["cursor"] == 3


async def test_feed_sends_each_view_once_to_its_reader_and_holds_only_the_last_ones() -> None:
    feed = FinishFeed(keep_views=2)
    feed.record("a", (3, {"execution_id": "a"}), "api-1")
    feed.record("plain")
    feed.record("b", (5, {"execution_id": "b"}), "api-1")
    elsewhere = await feed.since(feed.incarnation, 0, 0.0, "api-2")
    assert elsewhere["ids"] == ["a", "plain", "b"] and elsewhere["views"] == {}
    answer = await feed.since(feed.incarnation, 0, 0.0, "api-1")
    assert answer["views"] == {"a": (3, {"execution_id": "a"}), "b": (5, {"execution_id": "b"})}
    assert (await feed.since(feed.incarnation, 0, 0.0, "api-1"))["views"] == {}  # sent once
    for name in "cde":
        feed.record(name, (1, {"execution_id": name}), "api-1")
    answer = await feed.since(feed.incarnation, 3, 0.0, "api-1")
    assert answer["ids"] == ["c", "d", "e"] and set(answer["views"]) == {"d", "e"}
    feed.record("f", (2, {"execution_id": "f"}), "api-1")
    feed.record("f")  # f ran again (resumed) and ended without a waiter asking
    assert (await feed.since(feed.incarnation, 6, 0.0, "api-1"))["views"] == {}


async def test_watch_hands_a_carried_view_to_its_waiter() -> None:
    feed = FinishFeed()
    watch = watching(feed)
    try:
        await watch.primed("h")
        with_view, without = watch.waiter("h", "x"), watch.waiter("h", "y")
        feed.record("x", (9, {"execution_id": "x", "status": "completed"}), watch.reader)
        feed.record("y")
        assert await asyncio.wait_for(with_view, 1.0) == (9, {"execution_id": "x",
                                                               "status": "completed"})
        assert await asyncio.wait_for(without, 1.0) is None
    finally:
        await watch.close()


async def test_watch_wakes_the_waiter_of_a_finished_execution_only() -> None:
    feed = FinishFeed()
    watch = watching(feed)
    try:
        await watch.primed("h")
        done, pending = watch.waiter("h", "done"), watch.waiter("h", "still-running")
        feed.record("done")
        await asyncio.wait_for(done, 1.0)
        await asyncio.sleep(0.01)
        assert not pending.done()
    finally:
        await watch.close()


async def test_two_waiters_of_one_execution_do_not_cancel_each_other() -> None:
    """A request that gives up (timeout, client gone) leaves the other waiting."""
    feed = FinishFeed()
    watch = watching(feed)
    try:
        await watch.primed("h")
        impatient, patient = watch.waiter("h", "x"), watch.waiter("h", "x")
        try:
            await asyncio.wait_for(impatient, 0.01)
        except TimeoutError:
            watch.discard("h", "x", impatient)
        assert impatient.cancelled() and not patient.done()
        feed.record("x")
        await asyncio.wait_for(patient, 1.0)
        assert patient.result() is None
    finally:
        await watch.close()


async def test_a_host_whose_feed_hangs_wakes_its_waiters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("coordinator.completions.POLL_SECONDS", 0.05)
    monkeypatch.setattr("coordinator.completions.FEED_MARGIN_SECONDS", 0.05)

    async def hangs(host: str, inc: str | None, cursor: int | None,
                    timeout: float, reader: str) -> dict[str, Any]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    watch = CompletionWatch(hangs)
    try:
        await asyncio.wait_for(watch.primed("h"), 2.0)
        await asyncio.wait_for(watch.waiter("h", "x"), 2.0)
    finally:
        await watch.close()


async def test_watch_wakes_everyone_when_the_host_cannot_be_reached() -> None:
    calls = 0

    async def unreachable(host: str, inc: str | None, cursor: int | None,
                          timeout: float, reader: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        raise ConnectionError("host restarting")

    watch = CompletionWatch(unreachable)
    try:
        await asyncio.wait_for(watch.primed("h"), 1.0)
        await asyncio.wait_for(watch.waiter("h", "x"), 2.0)
        assert calls >= 2
    finally:
        await watch.close()


async def test_hand_over_batches_what_queues_while_a_call_is_in_flight() -> None:
    batches: list[list[str]] = []
    release = asyncio.Event()

    async def start_many(items: list[Item]) -> list[dict[str, Any]]:
        batches.append([execution_id for execution_id, *_ in items])
        await release.wait()
        return [{"status": "running", "id": execution_id} for execution_id, *_ in items]

    queue = HandOverQueue(start_many)
    first = queue.put("a", None)
    await asyncio.sleep(0)
    rest = [queue.put(name, None, 1) for name in "bcd"]
    release.set()
    answers = await asyncio.gather(first, *rest)
    assert batches == [["a"], ["b", "c", "d"]]
    assert [a["id"] for a in answers] == ["a", "b", "c", "d"]


async def test_hand_over_failure_fails_its_batch_and_not_the_next() -> None:
    calls = 0

    async def start_many(items: list[Item]) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("host gone")
        return [{"status": "running"} for _ in items]

    queue = HandOverQueue(start_many)
    failed = queue.put("a", None)
    try:
        await failed
        raise AssertionError("the first batch should fail")
    except ConnectionError:
        pass
    assert (await queue.put("b", None))["status"] == "running"


async def test_close_stops_a_loop_whose_first_cancel_was_lost() -> None:
    """Python 3.11's wait_for can drop a cancel (its inner call completing at that
    moment); here the fetch itself ignores the first one. close() must still return."""
    called = asyncio.Event()

    async def stubborn(host: str, inc: str | None, cursor: int | None,
                       timeout: float, reader: str) -> dict[str, Any]:
        called.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    watch = CompletionWatch(stubborn)
    watch.waiter("h", "x")
    await asyncio.wait_for(called.wait(), 1.0)
    await asyncio.wait_for(watch.close(), 5.0)
    await asyncio.wait_for(watch.primed("h"), 1.0)  # closed: answers at once
