"""Whole traces of sagas run on real Ray against real services, read from a real receiver."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
import ray

from tests.tracing.conftest import NAMESPACE, TracedStack
from tests.tracing.helpers import (
    Tree,
    check_no_secret,
    check_received,
    check_saga_trace,
    finish,
    received,
    run_saga,
    start,
    trace_of,
)

pytestmark = pytest.mark.ray


def _order(order_id: str) -> dict[str, object]:
    return {"order_id": order_id, "customer": "Ada", "email": "ada@example.com",
            "amount": 120.0, "items": [{"sku": "SKU-1", "qty": 2}], "address": "1 Loop Road"}


def _attempts(tree: Tree, name: str) -> list[dict[str, object]]:
    return [c.attributes for c in tree.children(tree.one(name)) if c.kind == "client"]


async def test_a_completed_saga_is_one_trace_from_caller_to_services(
        traced: TracedStack) -> None:
    run = await run_saga(traced, "order_fulfillment", _order(f"ORD-{secrets.token_hex(4)}"))
    assert run.view["status"] == "completed"
    tree = await trace_of(traced, run, "order_fulfillment")
    print("\n" + tree.render())
    check_saga_trace(tree, run, "order_fulfillment")
    check_received(tree, await received(traced, run.trace_id))
    steps = ["reserve_inventory", "charge_payment", "create_shipment", "confirm_order", "notify"]
    root = tree.one("saga order_fulfillment")
    assert [s.name for s in tree.children(root)] == [f"step {s}" for s in steps]
    for step in steps:
        attempts = _attempts(tree, f"step {step}")
        assert [(a["saga.attempt"], a["saga.outcome"]) for a in attempts] == [(1, "succeeded")]
        assert 200 <= int(attempts[0]["http.response.status_code"]) < 300
    assert not tree.named("compensate charge_payment")
    assert [e.name for e in root.events] == ["host assigned"]


async def test_a_retried_step_shows_each_attempt_and_the_wait(traced: TracedStack) -> None:
    value = {"order_id": f"RT-{secrets.token_hex(4)}", "faults": {"charge_payment": "error-once"}}
    run = await run_saga(traced, "faulty_order", value)
    assert run.view["status"] == "completed"
    tree = await trace_of(traced, run, "faulty_order")
    print("\n" + tree.render())
    check_saga_trace(tree, run, "faulty_order")
    check_received(tree, await received(traced, run.trace_id))
    step = tree.one("step charge_payment")
    first, second = tree.children(step)
    assert (first.attributes["saga.attempt"], first.attributes["saga.outcome"]) == (1, "retryable")
    assert first.attributes["http.response.status_code"] == 503
    assert first.error and first.status_message == "retryable: HTTP 503"
    assert (second.attributes["saga.attempt"], second.attributes["saga.outcome"]) == \
        (2, "succeeded")
    assert not second.error and not step.error
    [wait] = step.events
    assert wait.name == "retry scheduled" and wait.attributes["saga.attempt"] == 2
    assert "saga.retry.due" in wait.attributes
    assert first.end_ns <= wait.time_ns <= second.start_ns
    assert step.attributes["saga.attempts"] == 2


async def test_a_compensated_saga_links_each_compensation_to_its_step(
        traced: TracedStack) -> None:
    value = {"order_id": f"CP-{secrets.token_hex(4)}", "faults": {"create_shipment": "business"}}
    run = await run_saga(traced, "faulty_order", value)
    assert run.view["status"] == "compensated"
    tree = await trace_of(traced, run, "faulty_order")
    print("\n" + tree.render())
    check_saga_trace(tree, run, "faulty_order")
    check_received(tree, await received(traced, run.trace_id))
    failed = tree.one("step create_shipment")
    assert failed.error and failed.status_message == "business_failure: HTTP 422"
    [attempt] = _attempts(tree, "step create_shipment")
    assert attempt["saga.outcome"] == "business_failure"
    undo_payment, undo_stock = tree.one("compensate charge_payment"), \
        tree.one("compensate reserve_inventory")
    assert undo_payment.start_ns < undo_stock.start_ns  # undone in reverse order
    for undo, step in ((undo_payment, "charge_payment"), (undo_stock, "reserve_inventory")):
        assert undo.links == [(run.trace_id, tree.one(f"step {step}").span_id)]
        [attempt] = _attempts(tree, f"compensate {step}")
        assert (attempt["saga.step"], attempt["saga.phase"], attempt["saga.outcome"]) == \
            (step, "compensation", "succeeded")
    root = tree.one("saga faulty_order")
    assert root.status_message == "compensated: step_failed"
    assert root.attributes["saga.failed_step"] == "create_shipment"
    assert "compensation triggered" in [e.name for e in root.events]
    assert not tree.named("compensate create_shipment")


async def test_parallel_steps_overlap_under_the_saga_span(traced: TracedStack) -> None:
    value = {"trip_id": f"TR-{secrets.token_hex(4)}", "customer": "Grace", "car": True}
    run = await run_saga(traced, "trip_booking", value)
    assert run.view["status"] == "completed"
    tree = await trace_of(traced, run, "trip_booking")
    print("\n" + tree.render())
    check_saga_trace(tree, run, "trip_booking")
    check_received(tree, await received(traced, run.trace_id))
    flight, hotel, car = (tree.one(f"step {s}") for s in ("book_flight", "book_hotel", "book_car"))
    assert flight.start_ns < hotel.end_ns and hotel.start_ns < flight.end_ns  # both roots ran
    assert car.start_ns >= max(flight.end_ns, hotel.end_ns)
    [booking] = [c for c in tree.children(flight) if c.kind == "client"]
    assert booking.attributes["http.response.status_code"] == 201  # the token was accepted
    check_no_secret(traced.receiver.spans, traced.token)


async def test_a_dedicated_host_exports_before_it_exits(traced: TracedStack) -> None:
    run = await run_saga(traced, "faulty_order_dedicated", {"order_id": "DD-1"})
    assert run.view["status"] == "completed"
    tree = await trace_of(traced, run, "faulty_order_dedicated")
    check_saga_trace(tree, run, "faulty_order_dedicated")
    host = run.view["placement"]["host"]
    assert host.startswith(f"{NAMESPACE}-exec-")
    [assigned] = tree.one("saga faulty_order_dedicated").events
    assert assigned.attributes["saga.host"] == host


async def test_a_trace_survives_its_host_being_killed(traced: TracedStack) -> None:
    trip = f"KL-{secrets.token_hex(4)}"
    async with traced.session.post(f"{traced.services['hotels']}/_faults", json={
            "method": "POST", "path": "/reservations", "fault": "latency=1500", "times": 1,
            "match_body": {"trip": trip}}) as response:
        assert response.status == 201
    run = await start(traced, "trip_booking", {"trip_id": trip, "customer": "Lin", "car": False})

    def flight_sent(spans: list[object]) -> bool:
        return any(getattr(s, "kind", "") == "client" and
                   getattr(s, "attributes", {}).get("saga.step") == "book_flight"
                   for s in spans)

    # The flight's attempt is exported; the hotel's reply is still 1.5 s away.
    await traced.receiver.wait_for(run.trace_id, flight_sent, timeout=10)
    async with traced.session.get(f"{traced.url}/v1/executions/{run.execution_id}") as response:
        host = (await response.json())["placement"]["host"]
    actor = await asyncio.to_thread(ray.get_actor, host, namespace=NAMESPACE)
    killed_at = time.time_ns()
    await asyncio.to_thread(ray.kill, actor, no_restart=False)
    view = await finish(traced, run)
    assert view["status"] == "completed"
    tree = await trace_of(traced, run, "trip_booking")
    print("\n" + tree.render())
    check_saga_trace(tree, run, "trip_booking")
    records = await received(traced, run.trace_id)
    check_received(tree, records)

    root = tree.one("saga trip_booking")
    assert root.start_ns < killed_at < root.end_ns
    assigned = [e.attributes["saga.host"] for e in root.events if e.name == "host assigned"]
    assert assigned == [host, host]
    hotel = tree.one("step book_hotel")
    assert hotel.start_ns < killed_at < hotel.end_ns
    [wait] = [e for e in hotel.events if e.name == "retry scheduled"]
    assert wait.time_ns > killed_at
    # The attempt in flight at the kill is emitted by the new host under the id the old
    # one sent to the hotel service; the re-send follows with the same idempotency key.
    lost, resent = (c for c in tree.children(hotel) if c.kind == "client")
    assert (lost.attributes["saga.attempt"], lost.attributes["saga.outcome"]) == (1, "unknown")
    assert lost.attributes["saga.interrupted"] is True and lost.error
    assert lost.start_ns < killed_at < lost.end_ns <= wait.time_ns
    assert (resent.attributes["saga.attempt"], resent.attributes["saga.outcome"]) == \
        (2, "succeeded")
    [flight] = [c for c in tree.children(tree.one("step book_flight")) if c.kind == "client"]
    assert flight.resource["process.pid"] != resent.resource["process.pid"]
    assert lost.resource["process.pid"] == resent.resource["process.pid"]
    hotel_calls = records["hotels"]
    assert len(hotel_calls) == 2
    assert len({r["idempotency_key"] for r in hotel_calls}) == 1
