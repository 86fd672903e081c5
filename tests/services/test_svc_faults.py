"""Fault injection: the X-Fault header, /_faults rules and the startup flags."""

from __future__ import annotations

import time

import aiohttp
import pytest

from services.client import add_fault, clear_faults
from services.common import ServiceConfig
from services.runner import RunningServices, start_services
from tests.services.helpers import call, ledger

TRIP = {"trip": "T-1", "passenger": "Ada"}
SHORT = 0.3  # client timeout of the timeout faults' tests, in seconds


async def test_business_fault_is_a_422_without_effect(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["flights"]
    answer = await call(http, "POST", f"{url}/bookings", TRIP, key="k", fault="business")
    assert (answer.status, answer.content_type) == (422, "application/problem+json")
    assert answer.body["type"] == "urn:sagaray:problem:injected-business-failure"
    assert await ledger(http, url) == []
    # Not stored: the same key acts once the fault is gone.
    healed = await call(http, "POST", f"{url}/bookings", TRIP, key="k")
    assert healed.status == 201
    assert "Idempotent-Replayed" not in healed.headers
    # A stored reply wins over a later business fault: the key's outcome is decided.
    replay = await call(http, "POST", f"{url}/bookings", TRIP, key="k", fault="business")
    assert (replay.status, replay.body) == (201, healed.body)
    assert len(await ledger(http, url)) == 1


async def test_error_fault_is_a_503_every_time(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["hotels"]
    for _ in range(2):
        answer = await call(http, "POST", f"{url}/reservations", {"trip": "T"}, key="k",
                            fault="error")
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "0"
    assert await ledger(http, url) == []
    # Not stored: the same key acts once the fault is gone.
    healed = await call(http, "POST", f"{url}/reservations", {"trip": "T"}, key="k")
    assert healed.status == 201


async def test_error_once_fails_only_the_first_request_of_a_key(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["cars"]
    statuses = [
        (await call(http, "POST", f"{url}/rentals", {"trip": "T"}, key=key,
                    fault="error-once")).status
        for key in ("a", "a", "a", "b")
    ]
    assert statuses == [503, 201, 201, 503]
    assert [e["idempotency_key"] for e in await ledger(http, url)] == ["a"]


async def test_timeout_acts_then_holds_the_reply(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["payments"]
    body = {"order_id": "O-1", "amount": 10}
    with pytest.raises(TimeoutError):
        await call(http, "POST", f"{url}/charges", body, key="k", fault="timeout", timeout=SHORT)
    # The caller never saw the reply, but the charge happened.
    assert [e["op"] for e in await ledger(http, url)] == ["charge"]
    started = time.monotonic()
    retry = await call(http, "POST", f"{url}/charges", body, key="k")
    assert time.monotonic() - started < SHORT
    assert retry.status == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert len(await ledger(http, url)) == 1
    # A plain `timeout` holds every reply, replays included.
    with pytest.raises(TimeoutError):
        await call(http, "POST", f"{url}/charges", body, key="k", fault="timeout", timeout=SHORT)
    assert len(await ledger(http, url)) == 1


async def test_timeout_once_holds_only_the_first_request_of_a_key(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["shipping"]
    body = {"order_id": "O-1", "address": "1 Loop Road"}
    with pytest.raises(TimeoutError):
        await call(http, "POST", f"{url}/shipments", body, key="k", fault="timeout-once",
                   timeout=SHORT)
    retry = await call(http, "POST", f"{url}/shipments", body, key="k", fault="timeout-once",
                       timeout=SHORT)
    assert retry.status == 201
    entries = await ledger(http, url)
    assert [e["resource"] for e in entries] == [retry.body["shipment_id"]]


async def test_latency_and_combined_faults(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["orders"]
    started = time.monotonic()
    first = await call(http, "POST", f"{url}/orders/O-1/confirm", key="k",
                       fault="latency=120, error-once")
    assert first.status == 503
    assert time.monotonic() - started >= 0.12
    second = await call(http, "POST", f"{url}/orders/O-1/confirm", key="k",
                        fault="latency=10,error-once")
    assert second.status == 200
    empty = await call(http, "POST", f"{url}/orders/O-2/confirm", fault="")
    assert empty.status == 200
    unknown = await call(http, "POST", f"{url}/orders/O-3/confirm", fault="explode")
    assert unknown.status == 400
    assert len(await ledger(http, url)) == 2


async def test_rule_with_times_applies_that_many_times(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["flights"]
    rule = await add_fault(http, url, {"method": "POST", "path": "/bookings",
                                       "fault": "business", "times": 1})
    assert (rule["times"], rule["remaining"]) == (1, 1)
    first = await call(http, "POST", f"{url}/bookings", TRIP)
    second = await call(http, "POST", f"{url}/bookings", TRIP)
    assert (first.status, second.status) == (422, 201)
    listed = (await call(http, "GET", f"{url}/_faults")).body["rules"]
    assert [(r["hits"], r["remaining"]) for r in listed] == [(1, 0)]
    assert await clear_faults(http, url) == 1
    assert (await call(http, "GET", f"{url}/_faults")).body["rules"] == []


async def test_rule_matching_body_method_and_path_pattern(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["flights"]
    await add_fault(http, url, {"method": "POST", "path": "/bookings", "fault": "business",
                                "match_body": {"trip": "T-3"}})
    await add_fault(http, url, {"method": "POST", "path": "/bookings/*/confirm",
                                "fault": "error"})
    other = await call(http, "POST", f"{url}/bookings", {"trip": "T-1", "passenger": "A"})
    matched = await call(http, "POST", f"{url}/bookings", {"trip": "T-3", "passenger": "A"})
    assert (other.status, matched.status) == (201, 422)
    booking = f"{url}/bookings/{other.body['booking_id']}"
    assert (await call(http, "POST", f"{booking}/confirm")).status == 503
    # The rules name POST: a DELETE on the same paths is untouched.
    assert (await call(http, "DELETE", booking)).status == 200


async def test_rule_error_once_gives_each_key_one_503(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["notifications"]
    await add_fault(http, url, {"method": "*", "path": "/emails", "fault": "error-once"})
    statuses = [
        (await call(http, "POST", f"{url}/emails", {"to": "a@b.c"}, key=key)).status
        for key in ("a", "a", "b", "b")
    ]
    assert statuses == [503, 202, 503, 202]


@pytest.mark.parametrize(
    "rule",
    [
        {"path": "/bookings"},
        {"path": "bookings", "fault": "error"},
        {"path": "/bookings", "fault": "boom"},
        {"path": "/bookings", "fault": "latency=soon"},
        {"path": "/bookings", "fault": "error", "times": 0},
        {"path": "/bookings", "fault": "error", "match_body": ["trip"]},
    ],
)
async def test_invalid_rules_are_refused(
    svc: RunningServices, http: aiohttp.ClientSession, rule: dict[str, object]
) -> None:
    url = svc.urls["flights"]
    answer = await call(http, "POST", f"{url}/_faults", rule)
    assert (answer.status, answer.content_type) == (400, "application/problem+json")
    assert (await call(http, "GET", f"{url}/_faults")).body["rules"] == []


async def test_startup_error_rate_and_latency(http: aiohttp.ClientSession) -> None:
    configs = {
        "cars": ServiceConfig("cars", error_rate=1.0),
        "hotels": ServiceConfig("hotels", latency_ms=100),
    }
    async with await start_services(["cars", "hotels"], configs=configs) as running:
        failed = await call(http, "POST", f"{running.urls['cars']}/rentals", {"trip": "T"})
        assert (failed.status, failed.headers["Retry-After"]) == (503, "0")
        assert await ledger(http, running.urls["cars"]) == []
        started = time.monotonic()
        slow = await call(http, "POST", f"{running.urls['hotels']}/reservations", {"trip": "T"})
        assert slow.status == 201
        assert time.monotonic() - started >= 0.1
