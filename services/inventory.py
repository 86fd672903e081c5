"""Inventory: reserve stock for an order's items, release the reservation.

Every SKU starts with a generous stock, except SKUs whose name starts with
``OUT-OF-STOCK``, which have none, so a saga can be made to fail on purpose.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from services.app import create_service_app
from services.common import (
    Action,
    Call,
    JsonObject,
    Outcome,
    ProblemError,
    ServiceSpec,
    bad_request,
    create,
    lookup,
    transition,
)
from services.serve import service_main

NAME = "inventory"
DEFAULT_PORT = 9105
DEFAULT_STOCK = 1_000_000
OUT_OF_STOCK_PREFIX = "OUT-OF-STOCK"


def initial_stock(sku: str) -> int:
    return 0 if sku.startswith(OUT_OF_STOCK_PREFIX) else DEFAULT_STOCK


def available(stock: dict[str, Any], sku: str) -> int:
    units: int = stock.get(sku, initial_stock(sku))
    return units


def requested_units(items: Any) -> dict[str, int]:
    """Units per SKU; a SKU listed twice asks for the sum."""
    if not isinstance(items, list) or not items:
        raise bad_request("'items' must be a non-empty list of {sku, qty}")
    wanted: dict[str, int] = {}
    for item in items:
        sku = item.get("sku") if isinstance(item, dict) else None
        qty = item.get("qty") if isinstance(item, dict) else None
        if not isinstance(sku, str) or not sku:
            raise bad_request("each item needs a non-empty string 'sku'")
        if isinstance(qty, bool) or not isinstance(qty, int) or qty < 1:
            raise bad_request(f"item {sku!r}: 'qty' must be a positive integer")
        wanted[sku] = wanted.get(sku, 0) + qty
    return wanted


def reserve(call: Call) -> Outcome:
    order_id = call.require_str("order_id")
    wanted = requested_units(call.body.get("items"))
    stock = call.table("stock")
    short = sorted(sku for sku, qty in wanted.items() if available(stock, sku) < qty)
    if short:
        raise ProblemError(
            409, "Insufficient stock", f"not enough units of {', '.join(short)}"
        )
    for sku, qty in wanted.items():
        stock[sku] = available(stock, sku) - qty
    items = [{"sku": sku, "qty": qty} for sku, qty in wanted.items()]
    fields: JsonObject = {"order_id": order_id, "items": items}
    return create(call, "reservations", "reservation_id", "RSV", fields, "reserved")


def release(call: Call) -> Outcome:
    reservation = lookup(call, "reservations", "reservation_id", "reservation")
    outcome = transition(reservation, "reservation_id", "released")
    if outcome.effect is not None:
        stock = call.table("stock")
        for item in reservation["items"]:
            stock[item["sku"]] = available(stock, item["sku"]) + item["qty"]
    return outcome


def stock_level(call: Call) -> Outcome:
    sku = call.params["sku"]
    return Outcome(200, {"sku": sku, "available": available(call.table("stock"), sku)})


SPEC = ServiceSpec(
    name=NAME,
    default_port=DEFAULT_PORT,
    description="Stock reservations (SKUs starting with OUT-OF-STOCK have none).",
    actions=(
        Action("POST", "/reservations", "reserve", "forward", reserve),
        Action("DELETE", "/reservations/{reservation_id}", "release", "compensation", release),
        # A read: it never has an effect, so it never writes the ledger.
        Action("GET", "/stock/{sku}", "stock", "forward", stock_level),
    ),
)


# The same app factory and command line as every demo service, bound to this one.
create_app = partial(create_service_app, SPEC)
main = partial(service_main, SPEC)


if __name__ == "__main__":
    main()
