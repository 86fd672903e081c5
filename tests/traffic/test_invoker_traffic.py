"""The HttpInvoker routing real requests to real demo-service instances on loopback.

No Ray here: these drive one invoker directly, with a seeded random source, to check
the routing rules one by one (the saga-level tests are in test_traffic_sagas.py).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from coordinator.core.commands import HttpRequest
from coordinator.core.outcomes import DEFAULT_RETRYABLE, DEFAULT_SUCCESS, Reply, classify
from coordinator.invoker import Endpoint, HttpInvoker
from coordinator.traffic import OutlierPolicy, TrafficPolicy
from services.common import ServiceConfig
from services.runner import RunningInstances, add_fault, clear_faults, start_instances


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def notifications() -> AsyncIterator[RunningInstances]:
    running = await start_instances("notifications", 3)
    yield running
    await running.close()


def request(key: str | None = None, timeout: float = 5.0) -> HttpRequest:
    return HttpRequest(service="notifications", method="POST", path="/emails",
                       body={"to": "a@example.com"}, headers={}, timeout=timeout,
                       idempotency_key=key or uuid.uuid4().hex)


def invoker_for(running: RunningInstances, **policy: Any) -> HttpInvoker:
    endpoint = Endpoint("notifications", tuple(running.urls),
                        traffic=TrafficPolicy.model_validate(policy))
    return HttpInvoker({"notifications": endpoint}, rng=random.Random(11))


def retryable(reply: Reply) -> bool:
    outcome, allowed = classify(reply, DEFAULT_SUCCESS, DEFAULT_RETRYABLE)
    return outcome == "retryable" and allowed


async def test_a_retry_goes_to_another_instance(
        notifications: RunningInstances, http: aiohttp.ClientSession) -> None:
    await add_fault(http, notifications.urls[0], {"path": "/**", "fault": "error"})
    invoker = invoker_for(notifications, outlier={"consecutive_failures": 1000})
    try:
        failed_first = 0
        for _ in range(30):
            key = uuid.uuid4().hex
            first = await invoker.invoke(request(key))
            if first.status_code == 503:
                failed_first += 1
                second = await invoker.invoke(request(key))
                assert second.status_code == 202, second  # never the failing instance again
        hits = notifications.requests()
        print(f"\nretry elsewhere: {failed_first} of 30 first attempts met the failing "
              f"instance, every retry succeeded elsewhere; requests per instance {hits}")
        assert failed_first > 0 and hits[0] == failed_first
    finally:
        await invoker.close()


async def test_failing_instances_are_ejected_and_then_fail_fast_without_traffic(
        notifications: RunningInstances, http: aiohttp.ClientSession) -> None:
    for url in notifications.urls:
        await add_fault(http, url, {"path": "/**", "fault": "error"})
    invoker = invoker_for(notifications, outlier={"consecutive_failures": 2, "ejection": "30s"})
    try:
        for _ in range(6):
            assert (await invoker.invoke(request())).status_code == 503
        sent = sum(notifications.requests())
        started = time.monotonic()
        reply = await invoker.invoke(request())
        elapsed = time.monotonic() - started
        assert sum(notifications.requests()) == sent == 6  # nothing sent
        assert reply.failure == "connection_refused" and retryable(reply)
        assert "every instance is ejected" in (reply.error or "")
        assert reply.retry_after is not None and 25 < reply.retry_after <= 30
        snapshot = invoker.traffic_snapshot()
        assert {i["state"] for i in snapshot["instances"]} == {"open"}
        assert [i["ejections"] for i in snapshot["instances"]] == [1, 1, 1]
        print(f"\nall ejected: refused in {elapsed * 1000:.1f} ms, retry after "
              f"{reply.retry_after:.1f} s, nothing sent")
    finally:
        await invoker.close()


async def test_half_open_trial_closes_a_recovered_instance(
        notifications: RunningInstances, http: aiohttp.ClientSession) -> None:
    await add_fault(http, notifications.urls[1], {"path": "/**", "fault": "error"})
    invoker = invoker_for(notifications, outlier={"consecutive_failures": 1, "ejection": "300ms"})
    try:
        for _ in range(20):
            await invoker.invoke(request())
        states = {i["url"]: i for i in invoker.traffic_snapshot()["instances"]}
        assert states[notifications.urls[1]]["ejections"] >= 1
        await clear_faults(http, notifications.urls[1])
        await asyncio.sleep(0.7)  # past the (at most doubled) ejection
        before = notifications.requests()[1]
        for _ in range(20):
            assert (await invoker.invoke(request())).status_code == 202
        states = {i["url"]: i for i in invoker.traffic_snapshot()["instances"]}
        assert states[notifications.urls[1]]["state"] == "closed"
        assert notifications.requests()[1] > before  # back in rotation
    finally:
        await invoker.close()


async def test_health_checks_take_an_instance_out_and_bring_it_back(
        notifications: RunningInstances, http: aiohttp.ClientSession) -> None:
    invoker = invoker_for(notifications, health_path="/_health", health_interval="100ms",
                          health_timeout="500ms")
    bad = notifications.urls[2]
    try:
        await invoker.invoke(request())  # starts the health task
        await add_fault(http, bad, {"path": "/_health", "fault": "error"})
        await wait_for_state(invoker, bad, "open")
        before = notifications.requests()[2]
        for _ in range(30):
            assert (await invoker.invoke(request())).status_code == 202
        assert notifications.requests()[2] == before  # out of rotation
        await clear_faults(http, bad)
        await wait_for_state(invoker, bad, "closed")
        for _ in range(30):
            await invoker.invoke(request())
        assert notifications.requests()[2] > before
    finally:
        await invoker.close()


async def wait_for_state(invoker: HttpInvoker, url: str, state: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = {i["url"]: i["state"] for i in invoker.traffic_snapshot()["instances"]}
        if states[url] == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never became {state}: {invoker.traffic_snapshot()}")


async def test_the_bulkhead_queues_then_refuses_as_retryable() -> None:
    slow = await start_instances("notifications", 1,
                                 configs=[ServiceConfig("notifications", latency_ms=800)])
    invoker = invoker_for(slow, max_concurrency=2, queue_size=2, queue_timeout="200ms")
    try:
        replies = await asyncio.gather(*(invoker.invoke(request()) for _ in range(8)))
        ok = [r for r in replies if r.status_code == 202]
        refused = [r for r in replies if r.failure == "connection_refused"]
        assert len(ok) == 2 and len(refused) == 6
        assert all(retryable(r) and "bulkhead full" in (r.error or "") for r in refused)
        assert slow.requests() == [2]  # the refused ones were never sent
        [bulkhead] = invoker.traffic_snapshot()["bulkheads"]
        assert bulkhead == {"service": "notifications", "active": 0, "queued": 0,
                            "rejected": 6}
    finally:
        await invoker.close()
        await slow.close()


async def test_a_single_url_service_runs_the_plain_path() -> None:
    running = await start_instances("notifications", 1)
    invoker = invoker_for(running)
    try:
        for _ in range(3):
            assert (await invoker.invoke(request())).status_code == 202
        assert invoker.traffic_snapshot() == {"instances": [
            {"service": "notifications", "url": running.urls[0], "state": "closed",
             "outstanding": 0, "consecutive_failures": 0, "ejections": 0}], "bulkheads": []}
        traffic = invoker._traffic["notifications"]
        assert traffic.bulkhead is None and traffic._health is None
        assert traffic.instances[0].circuit._policy is None  # never ejected
    finally:
        await invoker.close()
        await running.close()


def test_outlier_policy_defaults_are_documented() -> None:
    assert OutlierPolicy() == OutlierPolicy(consecutive_failures=5, ejection=5.0,
                                            max_ejection=60.0)
