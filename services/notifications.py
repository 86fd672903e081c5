"""Notifications: queue an email. Sending cannot be undone, so no compensation."""

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
    new_id,
)
from services.serve import service_main

NAME = "notifications"
DEFAULT_PORT = 9104


def send(call: Call) -> Outcome:
    to = call.require_str("to")
    email_id = new_id("EM")
    email = {"email_id": email_id, "to": to, "status": "queued"}
    call.table("emails")[email_id] = {**email, "message": call.body}
    return Outcome(202, email, effect=email_id)


SPEC = ServiceSpec(
    name=NAME,
    default_port=DEFAULT_PORT,
    description="Outgoing emails (accepted for delivery, never sent).",
    actions=(Action("POST", "/emails", "send", "forward", send),),
)


def create_app(
    config: ServiceConfig | None = None, **options: Unpack[AppOptions]
) -> web.Application:
    return create_service_app(SPEC, config, **options)


def main(argv: Sequence[str] | None = None) -> None:
    service_main(SPEC, argv)


if __name__ == "__main__":
    main()
