"""Flights: book a seat for a trip, cancel the booking, confirm it (the trip's pivot)."""

from __future__ import annotations

from functools import partial

from services.app import create_service_app
from services.common import (
    Action,
    Call,
    Outcome,
    ProblemError,
    ServiceSpec,
    create,
    lookup,
    transition,
)
from services.serve import service_main

NAME = "flights"
DEFAULT_PORT = 9101
TOKEN_ENV = "FLIGHTS_TOKEN"


def book(call: Call) -> Outcome:
    fields = {"trip": call.require_str("trip"), "passenger": call.require_str("passenger")}
    return create(call, "bookings", "booking_id", "BK", fields, status="booked")


def cancel(call: Call) -> Outcome:
    return transition(lookup(call, "bookings", "booking_id", "booking"), "booking_id", "cancelled")


def confirm(call: Call) -> Outcome:
    booking = lookup(call, "bookings", "booking_id", "booking")
    if booking["status"] == "cancelled":
        raise ProblemError(
            409, "Booking cancelled",
            f"booking {booking['booking_id']!r} was cancelled and cannot be confirmed",
        )
    return transition(booking, "booking_id", "confirmed")


SPEC = ServiceSpec(
    name=NAME,
    default_port=DEFAULT_PORT,
    token_env=TOKEN_ENV,
    description="Flight bookings (needs 'Authorization: Bearer $FLIGHTS_TOKEN' when it is set).",
    actions=(
        Action("POST", "/bookings", "book", "forward", book),
        Action("DELETE", "/bookings/{booking_id}", "cancel", "compensation", cancel),
        Action("POST", "/bookings/{booking_id}/confirm", "confirm", "forward", confirm),
    ),
)


# The same app factory and command line as every demo service, bound to this one.
create_app = partial(create_service_app, SPEC)
main = partial(service_main, SPEC)


if __name__ == "__main__":
    main()
