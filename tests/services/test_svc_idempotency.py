"""Idempotency-Key: one effect per key, the first finished reply replayed after that."""

from __future__ import annotations

import asyncio

import aiohttp

from services.runner import RunningServices
from tests.services.helpers import call, ledger

TRIP = {"trip": "T-1", "passenger": "Ada"}


async def test_same_key_replays_the_first_reply(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["flights"]
    first = await call(http, "POST", f"{url}/bookings", TRIP, key="k1")
    second = await call(http, "POST", f"{url}/bookings", TRIP, key="k1")
    assert (second.status, second.body) == (first.status, first.body)
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    entries = await ledger(http, url)
    assert [(e["op"], e["idempotency_key"]) for e in entries] == [("book", "k1")]


async def test_different_keys_and_no_key_act_each_time(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["flights"]
    a = await call(http, "POST", f"{url}/bookings", TRIP, key="k1")
    b = await call(http, "POST", f"{url}/bookings", TRIP, key="k2")
    c = await call(http, "POST", f"{url}/bookings", TRIP)
    d = await call(http, "POST", f"{url}/bookings", TRIP)
    assert len({a.body["booking_id"], b.body["booking_id"], c.body["booking_id"],
                d.body["booking_id"]}) == 4
    assert len(await ledger(http, url)) == 4


async def test_concurrent_requests_with_one_key_act_once(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["payments"]
    body = {"order_id": "O-1", "amount": 10}
    # The latency keeps every request in flight together before any of them acts.
    answers = await asyncio.gather(*(
        call(http, "POST", f"{url}/charges", body, key="same", fault="latency=50")
        for _ in range(10)
    ))
    assert {a.status for a in answers} == {201}
    assert len({a.body["charge_id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 9
    assert len(await ledger(http, url)) == 1


async def test_repeated_compensation_returns_the_stored_reply(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["cars"]
    rented = await call(http, "POST", f"{url}/rentals", {"trip": "T-1"}, key="fwd")
    rental = f"{url}/rentals/{rented.body['id']}"
    undo = await call(http, "DELETE", rental, key="undo")
    again = await call(http, "DELETE", rental, key="undo")
    assert (again.status, again.body) == (undo.status, undo.body) == (200, undo.body)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [e["kind"] for e in await ledger(http, url)] == ["forward", "compensation"]


async def test_unknown_compensation_404_is_replayed(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["shipping"]
    first = await call(http, "DELETE", f"{url}/shipments/SHP-x", key="undo-x")
    second = await call(http, "DELETE", f"{url}/shipments/SHP-x", key="undo-x")
    assert first.status == second.status == 404
    assert second.body == first.body
    assert second.headers["Idempotent-Replayed"] == "true"


async def test_business_failure_is_stored_for_its_key(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["payments"]
    declined = await call(http, "POST", f"{url}/charges", {"order_id": "O", "amount": 50_000},
                          key="k")
    # Same key, now an acceptable amount: the key's outcome is already decided.
    replay = await call(http, "POST", f"{url}/charges", {"order_id": "O", "amount": 5}, key="k")
    assert declined.status == replay.status == 402
    assert replay.body == declined.body
    assert await ledger(http, url) == []
