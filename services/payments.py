"""Payments: charge an order, refund the charge. Amounts above 10000 are declined."""

from __future__ import annotations

from functools import partial

from services.app import create_service_app
from services.common import (
    Action,
    Call,
    Outcome,
    ProblemError,
    ServiceSpec,
    bad_request,
    create,
    lookup,
    transition,
)
from services.serve import service_main

NAME = "payments"
DEFAULT_PORT = 9106
DECLINE_ABOVE = 10_000


def charge(call: Call) -> Outcome:
    order_id = call.require_str("order_id")
    amount = call.require_number("amount")
    if amount <= 0:
        raise bad_request("'amount' must be positive")
    if amount > DECLINE_ABOVE:
        raise ProblemError(
            402, "Card declined", f"the card was declined for {amount:g} (limit {DECLINE_ABOVE})"
        )
    fields = {"order_id": order_id, "amount": call.body["amount"]}
    return create(call, "charges", "charge_id", "CH", fields, "captured")


def refund(call: Call) -> Outcome:
    return transition(lookup(call, "charges", "charge_id", "charge"), "charge_id", "refunded")


SPEC = ServiceSpec(
    name=NAME,
    default_port=DEFAULT_PORT,
    description="Card payments (amounts above 10000 are declined with 402).",
    actions=(
        Action("POST", "/charges", "charge", "forward", charge),
        Action("POST", "/charges/{charge_id}/refund", "refund", "compensation", refund),
    ),
)


# The same app factory and command line as every demo service, bound to this one.
create_app = partial(create_service_app, SPEC)
main = partial(service_main, SPEC)


if __name__ == "__main__":
    main()
