"""Hotels: reserve a room for a trip, cancel the reservation."""

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


def create_app(
    config: ServiceConfig | None = None, **options: Unpack[AppOptions]
) -> web.Application:
    return create_service_app(SPEC, config, **options)


def main(argv: Sequence[str] | None = None) -> None:
    service_main(SPEC, argv)


if __name__ == "__main__":
    main()
