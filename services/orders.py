"""Orders: confirm an order (the order saga's pivot; never undone)."""

from __future__ import annotations

from functools import partial

from services.app import create_service_app
from services.common import (
    Action,
    Call,
    Outcome,
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


# The same app factory and command line as every demo service, bound to this one.
create_app = partial(create_service_app, SPEC)
main = partial(service_main, SPEC)


if __name__ == "__main__":
    main()
