"""Each endpoint of each demo service, against real servers on loopback."""

from __future__ import annotations

import aiohttp
import pytest

from services.registry import SERVICE_NAMES
from services.runner import RunningServices
from tests.services.helpers import call, ledger

PROBLEM = "application/problem+json"


async def test_every_service_is_healthy(svc: RunningServices, http: aiohttp.ClientSession) -> None:
    assert set(svc.urls) == set(SERVICE_NAMES)
    for name, url in svc.urls.items():
        answer = await call(http, "GET", f"{url}/healthz")
        assert (answer.status, answer.body) == (200, {"status": "ok", "service": name})


async def test_flights_book_confirm_cancel(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["flights"]
    booked = await call(http, "POST", f"{url}/bookings", {"trip": "T-1", "passenger": "Ada"},
                        key="k-book")
    assert booked.status == 201
    booking_id = booked.body["booking_id"]
    assert booked.body["trip"] == "T-1"
    assert booked.body["passenger"] == "Ada"

    confirmed = await call(http, "POST", f"{url}/bookings/{booking_id}/confirm")
    assert confirmed.status == 200
    assert confirmed.body["booking_id"] == booking_id
    assert confirmed.body["status"] == "confirmed"

    cancelled = await call(http, "DELETE", f"{url}/bookings/{booking_id}", key="k-cancel")
    assert (cancelled.status, cancelled.body["status"]) == (200, "cancelled")
    # Cancelling what is already cancelled answers the same and has no effect.
    again = await call(http, "DELETE", f"{url}/bookings/{booking_id}", key="k-other")
    assert (again.status, again.body["status"]) == (200, "cancelled")
    refused = await call(http, "POST", f"{url}/bookings/{booking_id}/confirm")
    assert refused.status == 409
    assert refused.content_type == PROBLEM

    entries = await ledger(http, url)
    assert [(e["op"], e["kind"]) for e in entries] == [
        ("book", "forward"), ("confirm", "forward"), ("cancel", "compensation")]
    first = entries[0]
    assert first["seq"] == 1
    assert first["resource"] == booking_id
    assert first["idempotency_key"] == "k-book"
    assert first["request"] == {"trip": "T-1", "passenger": "Ada"}
    assert first["at"].endswith("+00:00")
    assert entries[1]["idempotency_key"] is None


@pytest.mark.parametrize(
    ("service", "method", "path"),
    [
        ("flights", "DELETE", "/bookings/BK-nope"),
        ("flights", "POST", "/bookings/BK-nope/confirm"),
        ("hotels", "POST", "/reservations/HTL-nope/cancel"),
        ("cars", "DELETE", "/rentals/CAR-nope"),
        ("inventory", "DELETE", "/reservations/RSV-nope"),
        ("payments", "POST", "/charges/CH-nope/refund"),
        ("shipping", "DELETE", "/shipments/SHP-nope"),
    ],
)
async def test_unknown_resource_is_a_404_problem(
    svc: RunningServices, http: aiohttp.ClientSession, service: str, method: str, path: str
) -> None:
    url = svc.urls[service]
    answer = await call(http, method, url + path, key="k-unknown")
    assert answer.status == 404
    assert answer.content_type == PROBLEM
    assert answer.body["status"] == 404
    assert answer.body["type"] == "urn:sagaray:problem:not-found"
    assert {"title", "detail"} <= set(answer.body)
    assert await ledger(http, url) == []


async def test_hotels_reserve_and_cancel(svc: RunningServices, http: aiohttp.ClientSession) -> None:
    url = svc.urls["hotels"]
    reserved = await call(http, "POST", f"{url}/reservations", {"trip": "T-1"})
    assert reserved.status == 201
    cancelled = await call(http, "POST", f"{url}/reservations/{reserved.body['id']}/cancel")
    assert (cancelled.status, cancelled.body["status"]) == (200, "cancelled")
    assert [e["op"] for e in await ledger(http, url)] == ["reserve", "cancel"]


async def test_cars_rent_and_return(svc: RunningServices, http: aiohttp.ClientSession) -> None:
    url = svc.urls["cars"]
    rented = await call(http, "POST", f"{url}/rentals", {"trip": "T-1"})
    assert rented.status == 201
    returned = await call(http, "DELETE", f"{url}/rentals/{rented.body['id']}")
    assert returned.status == 200
    assert [e["kind"] for e in await ledger(http, url)] == ["forward", "compensation"]


async def test_notifications_accept_an_email(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["notifications"]
    sent = await call(http, "POST", f"{url}/emails", {"to": "ada@example.com", "order_id": "O-1"})
    assert sent.status == 202
    assert sent.body["email_id"]
    missing = await call(http, "POST", f"{url}/emails", {"order_id": "O-1"})
    assert (missing.status, missing.content_type) == (400, PROBLEM)
    assert [e["request"]["order_id"] for e in await ledger(http, url)] == ["O-1"]


async def test_inventory_reserves_and_releases_stock(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["inventory"]
    body = {"order_id": "O-1", "items": [{"sku": "SKU-1", "qty": 2}, {"sku": "SKU-1", "qty": 1}]}
    reserved = await call(http, "POST", f"{url}/reservations", body)
    assert reserved.status == 201
    assert (await call(http, "GET", f"{url}/stock/SKU-1")).body["available"] == 999_997
    released = await call(http, "DELETE", f"{url}/reservations/{reserved.body['reservation_id']}")
    assert (released.status, released.body["status"]) == (200, "released")
    assert (await call(http, "GET", f"{url}/stock/SKU-1")).body["available"] == 1_000_000
    assert [e["op"] for e in await ledger(http, url)] == ["reserve", "release"]


async def test_inventory_out_of_stock_is_a_409_without_effect(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["inventory"]
    items = [{"sku": "SKU-1", "qty": 1}, {"sku": "OUT-OF-STOCK-9", "qty": 1}]
    answer = await call(http, "POST", f"{url}/reservations", {"order_id": "O-2", "items": items})
    assert (answer.status, answer.content_type) == (409, PROBLEM)
    assert "OUT-OF-STOCK-9" in answer.body["detail"]
    assert (await call(http, "GET", f"{url}/stock/SKU-1")).body["available"] == 1_000_000
    assert await ledger(http, url) == []
    bad = await call(http, "POST", f"{url}/reservations", {"order_id": "O-2", "items": []})
    assert bad.status == 400


async def test_payments_charge_refund_and_decline(
    svc: RunningServices, http: aiohttp.ClientSession
) -> None:
    url = svc.urls["payments"]
    charged = await call(http, "POST", f"{url}/charges", {"order_id": "O-1", "amount": 120.5})
    assert charged.status == 201
    refunded = await call(http, "POST", f"{url}/charges/{charged.body['charge_id']}/refund")
    assert (refunded.status, refunded.body["status"]) == (200, "refunded")
    declined = await call(http, "POST", f"{url}/charges", {"order_id": "O-2", "amount": 10_000.01})
    assert (declined.status, declined.content_type) == (402, PROBLEM)
    assert declined.body["type"] == "urn:sagaray:problem:card-declined"
    limit = await call(http, "POST", f"{url}/charges", {"order_id": "O-3", "amount": 10_000})
    assert limit.status == 201
    assert [e["op"] for e in await ledger(http, url)] == ["charge", "refund", "charge"]


async def test_shipping_and_orders(svc: RunningServices, http: aiohttp.ClientSession) -> None:
    shipping = svc.urls["shipping"]
    shipped = await call(http, "POST", f"{shipping}/shipments",
                         {"order_id": "O-1", "address": "1 Loop Road"})
    assert shipped.status == 201
    cancelled = await call(http, "DELETE", f"{shipping}/shipments/{shipped.body['shipment_id']}")
    assert cancelled.status == 200

    orders = svc.urls["orders"]
    confirmed = await call(http, "POST", f"{orders}/orders/O-1/confirm")
    assert (confirmed.status, confirmed.body) == (200, {"order_id": "O-1", "status": "confirmed"})
    assert [e["resource"] for e in await ledger(http, orders)] == ["O-1"]


async def test_reset_forgets_everything(svc: RunningServices, http: aiohttp.ClientSession) -> None:
    url = svc.urls["hotels"]
    reserved = await call(http, "POST", f"{url}/reservations", {"trip": "T-1"}, key="k1")
    answer = await call(http, "POST", f"{url}/_reset")
    assert answer.body == {"service": "hotels", "reset": True}
    assert await ledger(http, url) == []
    gone = await call(http, "POST", f"{url}/reservations/{reserved.body['id']}/cancel")
    assert gone.status == 404
    fresh = await call(http, "POST", f"{url}/reservations", {"trip": "T-1"}, key="k1")
    assert fresh.body["id"] != reserved.body["id"]


async def test_bad_requests_are_problems(svc: RunningServices, http: aiohttp.ClientSession) -> None:
    url = svc.urls["flights"]
    async with http.post(f"{url}/bookings", data=b"{not json",
                         headers={"Content-Type": "application/json"}) as response:
        assert (response.status, response.content_type) == (400, PROBLEM)
    wrong_type = await call(http, "POST", f"{url}/bookings", {"trip": 3, "passenger": "Ada"})
    assert wrong_type.status == 400
    unknown = await call(http, "GET", f"{url}/nowhere")
    assert (unknown.status, unknown.content_type) == (404, PROBLEM)
    not_allowed = await call(http, "PUT", f"{url}/bookings")
    assert (not_allowed.status, not_allowed.content_type) == (405, PROBLEM)
    assert await ledger(http, url) == []
