"""Shipping: schedule a shipment for an order, cancel it."""

from __future__ import annotations

from functools import partial

from services.app import create_service_app
from services.common import (
    Action,
    Call,
    Outcome,
    ServiceSpec,
    create,
    lookup,
    transition,
)
from services.serve import service_main

NAME = "shipping"
DEFAULT_PORT = 9107


def ship(call: Call) -> Outcome:
    fields = {"order_id": call.require_str("order_id"), "address": call.require_str("address")}
    return create(call, "shipments", "shipment_id", "SHP", fields, "scheduled")


def cancel(call: Call) -> Outcome:
    shipment = lookup(call, "shipments", "shipment_id", "shipment")
    return transition(shipment, "shipment_id", "cancelled")


SPEC = ServiceSpec(
    name=NAME,
    default_port=DEFAULT_PORT,
    description="Shipments.",
    actions=(
        Action("POST", "/shipments", "ship", "forward", ship),
        Action("DELETE", "/shipments/{shipment_id}", "cancel", "compensation", cancel),
    ),
)


# The same app factory and command line as every demo service, bound to this one.
create_app = partial(create_service_app, SPEC)
main = partial(service_main, SPEC)


if __name__ == "__main__":
    main()
