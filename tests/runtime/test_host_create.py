"""A start journaled by the host it is leased to, over the host link.

A real host core behind a real link server, a real SQLite journal and the demo
services; no Ray. The API's side (falling back to its own create) is tested in a
real stack in ``test_host_link_stack.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from coordinator import pool as pool_module
from coordinator.core import events as ev
from coordinator.core.opening import opening_round
from coordinator.host_config import HostConfig
from coordinator.host_core import HostCore
from coordinator.host_link import LinkClient, LinkServer
from coordinator.journal.base import Journal, NewExecution
from coordinator.link_codec import (
    CREATE,
    FINISHED_SINCE,
    decode_answer,
    decode_create,
    decode_feed,
    encode_create,
    encode_poll,
    host_handlers,
)
from coordinator.pool import ANSWERED, MAYBE_WRITTEN, NOT_SENT, HostPool
from tests.faults.conftest import SAGA
from tests.runtime.hostcore import charges, events_of
from tests.runtime.test_opening_round import definition_of


def new_start(config: HostConfig, owner: str, key: str | None = None
              ) -> tuple[NewExecution, list[ev.Event]]:
    """A start as the API builds it for ``owner``: its row, and its opening round."""
    execution_id, now = uuid.uuid4().hex, time.time()
    started = ev.ExecutionStarted(at=now, execution_id=execution_id, saga=SAGA, version=1,
                                  input={"order_id": f"ORD-{execution_id[:10]}", "faults": {}})
    record = NewExecution(execution_id, SAGA, 1, now, key, "hash-1" if key else None)
    return record, [started, *opening_round(definition_of(config), started, now, owner, None)]


@pytest.fixture
async def served(setup: tuple[Journal, HostConfig]
                 ) -> AsyncIterator[tuple[HostCore, LinkClient]]:
    _, config = setup
    core = HostCore("h1", config)
    link = LinkServer(host_handlers(core))
    await link.start("127.0.0.1")
    assert link.address is not None
    client = LinkClient(link.address, link.key)
    yield core, client
    client.close()
    await link.close()
    await core.close()


async def create(client: LinkClient, record: NewExecution, events: list[ev.Event],
                 reader: str | None = None) -> dict[str, Any]:
    return decode_answer(await client.call(CREATE, encode_create(record, events, reader)))


def test_a_create_crosses_the_link_unchanged(setup: tuple[Journal, HostConfig]) -> None:
    record, events = new_start(setup[1], "h1", key="k-1")
    assert decode_create(encode_create(record, events, "r")) == (record, events, "r")


async def test_the_host_journals_the_start_leased_to_itself_and_runs_it(
        setup: tuple[Journal, HostConfig], served: tuple[HostCore, LinkClient],
        demo_services: dict[str, str]) -> None:
    journal, config = setup
    _, client = served
    primed = decode_feed(await client.call(FINISHED_SINCE, encode_poll(None, None, 0, None)))
    record, events = new_start(config, "h1")
    answer = await create(client, record, events, "reader-1")
    assert answer == {"host": "h1", "node_id": None, "status": "running", "written": True}
    row = await journal.get_execution(record.execution_id)
    assert row is not None and (row.owner, row.fence) == ("h1", 1)
    assert row.lease_until is not None and row.lease_until > time.time()
    fed = decode_feed(await client.call(FINISHED_SINCE, encode_poll(
        primed["incarnation"], primed["cursor"], 30.0, "reader-1")))
    assert fed["views"][record.execution_id][1]["status"] == "completed"
    history = await events_of(journal, record.execution_id)
    assert history[:len(events)] == events
    # The handed opening round was used as it is: no attempt was interrupted and re-sent.
    assert not [e for e in history if isinstance(e, ev.StepAttemptFailed)]
    assert len(await charges(demo_services, record.execution_id)) == 1


async def test_a_known_idempotency_key_names_the_first_and_writes_nothing(
        setup: tuple[Journal, HostConfig], served: tuple[HostCore, LinkClient]) -> None:
    journal, config = setup
    _, client = served
    first, events = new_start(config, "h1", key="k-2")
    assert (await create(client, first, events))["written"] is True
    second, more = new_start(config, "h1", key="k-2")
    answer = await create(client, second, more)
    assert answer["written"] is False and answer["status"] == "exists"
    assert (answer["execution_id"], answer["request_hash"]) == (first.execution_id, "hash-1")
    assert await journal.get_execution(second.execution_id) is None


async def test_a_draining_host_writes_nothing(
        setup: tuple[Journal, HostConfig], served: tuple[HostCore, LinkClient]) -> None:
    journal, config = setup
    core, client = served
    await core.drain(0.0)
    record, events = new_start(config, "h1")
    answer = await create(client, record, events)
    assert (answer["status"], answer["written"]) == ("draining", False)
    assert await journal.get_execution(record.execution_id) is None


async def slow_create(body: bytes) -> bytes:
    await asyncio.sleep(5)
    return b"{}"


async def refused_create(body: bytes) -> bytes:
    raise RuntimeError("the journal is unavailable")


@pytest.mark.parametrize("handler, outcome", [
    (slow_create, MAYBE_WRITTEN), (refused_create, MAYBE_WRITTEN)])
async def test_the_pool_says_when_a_create_may_have_been_written(
        setup: tuple[Journal, HostConfig], monkeypatch: pytest.MonkeyPatch,
        handler: Any, outcome: str) -> None:
    """A host that raised, or did not answer in time, may have written the start:
    the API's own create must then expect to find it."""
    monkeypatch.setattr(pool_module, "CREATE_SECONDS", 0.2)
    _, config = setup
    link = LinkServer({CREATE: handler})
    await link.start("127.0.0.1")
    assert link.address is not None
    pool = HostPool(config, 1, refresh_seconds=None)
    record, events = new_start(config, "h1")
    assert await pool.create_on("h1", record, events, None) == (NOT_SENT, None)
    pool._links["h1"] = LinkClient(link.address, link.key)
    try:
        assert await pool.create_on("h1", record, events, None) == (outcome, None)
        assert pool.calls[CREATE, "link"] == 0
    finally:
        pool._links["h1"].close()
        await link.close()


async def test_the_pool_reports_an_answered_create(
        setup: tuple[Journal, HostConfig], served: tuple[HostCore, LinkClient]) -> None:
    _, config = setup
    _, client = served
    pool = HostPool(config, 1, refresh_seconds=None)
    pool._links["h1"] = LinkClient(client.address, client._key)
    record, events = new_start(config, "h1")
    try:
        outcome, answer = await pool.create_on("h1", record, events, None)
        assert outcome == ANSWERED and answer is not None and answer["written"] is True
        assert pool.calls[CREATE, "link"] == 1
        assert pool.node_of("h1") is None  # the answer named no node (no Ray here)
    finally:
        pool._links["h1"].close()
