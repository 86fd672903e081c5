"""Flights: book a seat for a trip, cancel the booking, confirm it (the trip's pivot)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

from aiohttp import web

from services.app import AppOptions, create_service_app
from services.common import (
    Action,
    Call,
    Outcome,
    ProblemError,
    ServiceConfig,
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


def create_app(
    config: ServiceConfig | None = None, **options: Unpack[AppOptions]
) -> web.Application:
    return create_service_app(SPEC, config, **options)


def main(argv: Sequence[str] | None = None) -> None:
    service_main(SPEC, argv)


if __name__ == "__main__":
    main()
