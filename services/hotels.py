"""Hotels: reserve a room for a trip, cancel the reservation."""

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

NAME = "hotels"
DEFAULT_PORT = 9102


def reserve(call: Call) -> Outcome:
    return create(call, "reservations", "id", "HTL", {"trip": call.require_str("trip")}, "reserved")


def cancel(call: Call) -> Outcome:
    return transition(lookup(call, "reservations", "id", "reservation"), "id", "cancelled")


SPEC = ServiceSpec(
    name=NAME,
    default_port=DEFAULT_PORT,
    description="Hotel reservations.",
    actions=(
        Action("POST", "/reservations", "reserve", "forward", reserve),
        Action("POST", "/reservations/{id}/cancel", "cancel", "compensation", cancel),
    ),
)


# The same app factory and command line as every demo service, bound to this one.
create_app = partial(create_service_app, SPEC)
main = partial(service_main, SPEC)


if __name__ == "__main__":
    main()
