"""Notifications: queue an email. Sending cannot be undone, so no compensation."""

from __future__ import annotations

from functools import partial

from services.app import create_service_app
from services.common import (
    Action,
    Call,
    Outcome,
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


# The same app factory and command line as every demo service, bound to this one.
create_app = partial(create_service_app, SPEC)
main = partial(service_main, SPEC)


if __name__ == "__main__":
    main()
