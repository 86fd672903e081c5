"""Orders: confirm an order (the order saga's pivot; never undone)."""

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
)
from services.serve import service_main

NAME = "orders"
DEFAULT_PORT = 9108


def confirm(call: Call) -> Outcome:
    order_id = call.params["order_id"]
    orders = call.table("orders")
    if order_id in orders:
        return Outcome(200, dict(orders[order_id]))
    order = {"order_id": order_id, "status": "confirmed"}
    orders[order_id] = order
    return Outcome(200, dict(order), effect=order_id)


SPEC = ServiceSpec(
    name=NAME,
    default_port=DEFAULT_PORT,
    description="Order confirmation.",
    actions=(Action("POST", "/orders/{order_id}/confirm", "confirm", "forward", confirm),),
)


def create_app(
    config: ServiceConfig | None = None, **options: Unpack[AppOptions]
) -> web.Application:
    return create_service_app(SPEC, config, **options)


def main(argv: Sequence[str] | None = None) -> None:
    service_main(SPEC, argv)


if __name__ == "__main__":
    main()
