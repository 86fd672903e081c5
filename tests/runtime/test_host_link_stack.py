"""The host link in a real stack: real Ray SagaHosts, the demo services, the HTTP API.

The session's stack uses the link (the default); a stack of its own here runs with
``host_link=False``, Ray actor calls only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from coordinator.server import Stack
from tests.conftest import DemoStack, serving, stack_options
from tests.runtime.conftest import Api
from tests.runtime.test_limits_metrics import scrape

pytestmark = pytest.mark.ray
SAGA = "faulty_order_patient"


def order() -> dict[str, Any]:
    return {"order_id": f"o-{uuid.uuid4().hex[:8]}", "amount": 5}


def stack_of(api: Api) -> Stack:
    return cast(Stack, api.stack.stack)


async def run_all(api: Api, count: int) -> list[dict[str, Any]]:
    views = await asyncio.gather(*(api.run(SAGA, order()) for _ in range(count)))
    assert [view["status"] for view in views] == ["completed"] * count, views
    return views


def journal_bytes(journal: Path) -> bytes:
    files = (journal, journal.with_name(journal.name + "-wal"))
    return b"".join(path.read_bytes() for path in files if path.exists())


async def calls_via(api: Api, via: str, call: str = "start_many") -> float:
    """This API process's ``sagaray_host_calls_total`` for ``call`` made ``via``."""
    found = await scrape(api)
    return found.get(("sagaray_host_calls_total", frozenset({("call", call), ("via", via)})),
                     0.0)


async def link_calls(stack: Stack) -> int:
    return sum(stats["link"]["calls"] for stats in await stack.pool.stats())


async def link_to_every_host(api: Api) -> list[dict[str, Any]]:
    """Run sagas until every host has named its link here (the first hand-over to a host
    goes over Ray); the views of those sagas."""
    stack, views = stack_of(api), []
    for _ in range(10):
        views += await run_all(api, 4)
        if set(stack.pool._links) == set(stack.pool.names):
            return views
    raise AssertionError(f"links to {sorted(stack.pool._links)} of {stack.pool.names}")


async def test_hand_overs_and_feed_polls_go_over_the_link(api: Api) -> None:
    stack = stack_of(api)
    await link_to_every_host(api)
    before, reported = await link_calls(stack), await calls_via(api, "link")
    await run_all(api, 20)
    # At least one hand-over per batch and the feed polls that brought the ends.
    assert await link_calls(stack) - before >= 2
    assert await calls_via(api, "link") > reported
    assert await calls_via(api, "link", "finished_since") > 0
    assert set(stack.pool._links) <= set(stack.pool.names)
    assert stack.pool._links


async def test_the_links_key_reaches_no_response_journal_or_stats(api: Api) -> None:
    stack = stack_of(api)
    views = await link_to_every_host(api)
    keys = [link._key for link in stack.pool._links.values()]
    assert keys
    execution_id = views[0]["execution_id"]
    said = [str(views)]
    for path in (f"/v1/executions/{execution_id}", f"/v1/executions/{execution_id}/events",
                 "/v1/executions?limit=50"):
        said.append(str((await api.get(path))[1]))
    said.append(str(await stack.pool.stats()))
    stored = await asyncio.to_thread(journal_bytes, api.stack.journal_path)
    for key in keys:
        assert not [text for text in said if key in text]
        assert key.encode() not in stored


async def test_a_broken_link_falls_back_to_ray_and_loses_nothing(api: Api) -> None:
    stack = stack_of(api)
    await link_to_every_host(api)
    links = list(stack.pool._links.values())
    for link in links:
        link._clock = lambda: 0.0  # stays down until the test says otherwise
        if link._writer is not None:
            link._writer.transport.abort()  # as a network cut would
    await asyncio.sleep(0.1)
    before, over_ray = await link_calls(stack), await calls_via(api, "ray")
    await run_all(api, 12)
    assert await link_calls(stack) == before, "all of these went over Ray"
    assert await calls_via(api, "ray") > over_ray  # what an operator sees
    for link in links:
        link._clock, link._down_until = time.monotonic, 0.0
    await run_all(api, 4)
    assert await link_calls(stack) > before, "the link is used again once it is back"


@pytest.fixture(scope="module")
async def ray_only(ray_session: None, demo_services: dict[str, str],
                   tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoStack]:
    base = tmp_path_factory.mktemp("ray-only")
    options = await stack_options(base, demo_services, hosts=1, host_link=False,
                                  namespace=f"sagaray-ray-only-{uuid.uuid4().hex[:6]}")
    async with serving(options, demo_services, base / "journal.db") as served:
        yield served
    cast(Stack, served.stack).pool.shutdown()


async def test_without_the_link_everything_goes_over_ray(ray_only: DemoStack) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        api = Api(session, ray_only)
        await run_all(api, 12)
        stack = stack_of(api)
        assert not stack.pool._links
        assert [stats["link"] for stats in await stack.pool.stats()] == [None]
        assert await calls_via(api, "ray") > 0
        assert await calls_via(api, "link") == 0
