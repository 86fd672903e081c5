"""Cars: rent a car for a trip, return the rental."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

from aiohttp import web

from services.app import AppOptions, create_service_app
from services.common import (
    Action,
    Call,
    Outcome,
    ServiceConfig,
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


def create_app(
    config: ServiceConfig | None = None, **options: Unpack[AppOptions]
) -> web.Application:
    return create_service_app(SPEC, config, **options)


def main(argv: Sequence[str] | None = None) -> None:
    service_main(SPEC, argv)


if __name__ == "__main__":
    main()
