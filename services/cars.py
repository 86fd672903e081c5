"""Cars: rent a car for a trip, return the rental."""

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

NAME = "cars"
DEFAULT_PORT = 9103


def rent(call: Call) -> Outcome:
    return create(call, "rentals", "id", "CAR", {"trip": call.require_str("trip")}, "rented")


def cancel(call: Call) -> Outcome:
    return transition(lookup(call, "rentals", "id", "rental"), "id", "cancelled")


SPEC = ServiceSpec(
    name=NAME,
    default_port=DEFAULT_PORT,
    description="Car rentals.",
    actions=(
        Action("POST", "/rentals", "rent", "forward", rent),
        Action("DELETE", "/rentals/{id}", "cancel", "compensation", cancel),
    ),
)


# The same app factory and command line as every demo service, bound to this one.
create_app = partial(create_service_app, SPEC)
main = partial(service_main, SPEC)


if __name__ == "__main__":
    main()
