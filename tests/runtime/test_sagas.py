"""Sagas end to end: real Ray hosts, real demo services on loopback, the real HTTP API."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.runtime.conftest import Api

ORDER_STEPS = ["reserve_inventory", "charge_payment", "create_shipment", "confirm_order"]
UNDO = {"reserve_inventory": ("inventory", "release"), "charge_payment": ("payments", "refund"),
        "create_shipment": ("shipping", "cancel")}
FORWARD = {"reserve_inventory": ("inventory", "reserve"), "charge_payment": ("payments", "charge"),
           "create_shipment": ("shipping", "ship"), "confirm_order": ("orders", "confirm"),
           "notify": ("notifications", "send")}


def order(**extra: Any) -> dict[str, Any]:
    return {"order_id": f"ORD-{uuid.uuid4().hex[:8]}", **extra}


def shipped_order(**extra: Any) -> dict[str, Any]:
    return {"order_id": f"ORD-{uuid.uuid4().hex[:8]}", "customer": "Ada",
            "email": "ada@example.com", "amount": 42.5, "items": [{"sku": "SKU-1", "qty": 1}],
            "address": "1 Loop Road", **extra}


def steps(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in view["steps"]}


async def effects(api: Api, execution_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every ledger entry the execution caused, per (service, op)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for service in ("inventory", "payments", "shipping", "orders", "notifications",
                    "flights", "hotels", "cars"):
        for entry in await api.ledger(service, execution_id):
            found.setdefault(f"{service}.{entry['op']}", []).append(entry)
    return found


async def test_order_fulfillment_completes_with_one_effect_per_step(api: Api) -> None:
    view = await api.run("order_fulfillment", shipped_order())
    assert view["status"] == "completed", view
    assert all(s["status"] == "succeeded" and s["attempts"] == 1 for s in view["steps"])
    assert view["placement"]["host"] and view["placement"]["node_id"]
    done = await effects(api, view["execution_id"])
    assert sorted(done) == sorted(f"{s}.{op}" for s, op in FORWARD.values())
    assert all(len(entries) == 1 for entries in done.values())
    keys = {entries[0]["idempotency_key"] for entries in done.values()}
    assert f"{view['execution_id']}:charge_payment:action" in keys
    # Created leased to its host, which adopted that lease instead of claiming again.
    row = await api.stack.stack.journal.get_execution(view["execution_id"])  # type: ignore[attr-defined]
    assert row is not None and row.fence == 1 and row.owner is None


@pytest.mark.parametrize("failing", ORDER_STEPS)
async def test_business_failure_at_each_step_compensates_in_reverse(
    api: Api, failing: str
) -> None:
    view = await api.run("faulty_order", order(faults={failing: "business"}))
    assert view["status"] == "compensated" and view["reason"] == "step_failed", view
    done = await effects(api, view["execution_id"])
    before = ORDER_STEPS[: ORDER_STEPS.index(failing)]
    undone = [step for step in before if step in UNDO]
    for step in undone:
        service, op = UNDO[step]
        assert len(done[f"{service}.{op}"]) == 1, (step, done)
        assert steps(view)[step]["status"] == "compensated"
        assert steps(view)[step]["compensation"]["status"] == "compensated"
    assert steps(view)[failing]["status"] == "failed"
    assert not any(f"{s}.{op}" in done for s, op in (FORWARD[failing],))
    undo_times = [done[f"{UNDO[s][0]}.{UNDO[s][1]}"][0]["at"] for s in undone]
    assert undo_times == sorted(undo_times, reverse=True), "undone in reverse order"


async def test_503_then_success_retries_with_the_same_key(api: Api) -> None:
    view = await api.run("faulty_order", order(faults={"charge_payment": "error-once"}))
    assert view["status"] == "completed", view
    assert steps(view)["charge_payment"]["attempts"] == 2
    done = await effects(api, view["execution_id"])
    assert len(done["payments.charge"]) == 1
    _, body = await api.get(f"/v1/executions/{view['execution_id']}/events")
    types = [event["type"] for event in body["events"]]
    assert "retry_scheduled" in types and types[-1] == "execution_completed"


async def test_timeout_with_unknown_outcome_is_learned_then_compensated(api: Api) -> None:
    view = await api.run("faulty_order", order(faults={"create_shipment": "timeout-once"}))
    assert view["status"] == "compensated", view
    shipment = steps(view)["create_shipment"]
    assert shipment["status"] == "compensated"
    done = await effects(api, view["execution_id"])
    # The service acted once; the re-sent action (same key) learned the id; then undone.
    assert len(done["shipping.ship"]) == 1 and len(done["shipping.cancel"]) == 1
    assert done["shipping.cancel"][0]["resource"] == done["shipping.ship"][0]["resource"]


async def test_trip_branches_run_at_the_same_time_and_car_is_skipped(api: Api) -> None:
    trip = f"TRIP-{uuid.uuid4().hex[:8]}"
    for service, path in (("flights", "/bookings"), ("hotels", "/reservations")):
        await api.fault(service, {"method": "POST", "path": path, "fault": "latency=300",
                                  "match_body": {"trip": trip}})
    view = await api.run("trip_booking", {"trip_id": trip, "customer": "Grace", "car": False})
    assert view["status"] == "completed", view
    flight, hotel = steps(view)["book_flight"], steps(view)["book_hotel"]
    assert flight["started_at"] < hotel["ended_at"] and hotel["started_at"] < flight["ended_at"]
    assert steps(view)["book_car"]["status"] == "skipped"
    assert await api.ledger("cars", view["execution_id"]) == []


async def test_business_failure_after_pivot_is_retried_forward(api: Api) -> None:
    value = shipped_order()
    await api.fault("notifications", {"method": "POST", "path": "/emails", "fault": "business",
                                      "times": 2, "match_body": {"order_id": value["order_id"]}})
    view = await api.run("order_fulfillment", value)
    assert view["status"] == "completed", view
    assert steps(view)["notify"]["attempts"] == 3
    assert not any(s["compensation"] for s in view["steps"])


async def test_failure_after_pivot_ends_failed_then_resume_completes(api: Api) -> None:
    value = order()
    await api.fault("notifications", {"method": "POST", "path": "/emails", "fault": "business",
                                      "times": 4, "match_body": {"order_id": value["order_id"]}})
    view = await api.run("faulty_order", value)
    assert view["status"] == "failed" and view["reason"] == "step_failed_after_pivot", view
    assert steps(view)["notify"]["attempts"] == 4
    assert steps(view)["confirm_order"]["status"] == "succeeded"
    assert not any(s["compensation"] for s in view["steps"])
    status, _ = await api.post(f"/v1/executions/{view['execution_id']}/cancel", {})
    assert status == 409
    status, body = await api.post(f"/v1/executions/{view['execution_id']}/resume")
    assert status == 202, body
    resumed = await api.wait(view["execution_id"])
    assert resumed["status"] == "completed", resumed
    assert steps(resumed)["notify"]["attempts"] == 5
    status, _ = await api.post(f"/v1/executions/{view['execution_id']}/resume")
    assert status == 409


async def test_failed_compensation_leaves_a_failed_saga_that_resume_finishes(api: Api) -> None:
    value = order(faults={"create_shipment": "business"})
    await api.fault("payments", {"method": "POST", "path": "/charges/*/refund", "fault": "error",
                                 "times": 5})
    view = await api.run("faulty_order", value)
    assert view["status"] == "failed", view
    assert view["not_compensated"] == ["reserve_inventory", "charge_payment"]
    assert steps(view)["charge_payment"]["status"] == "compensation_failed"
    assert steps(view)["reserve_inventory"]["status"] == "succeeded"  # order kept
    status, _ = await api.post(f"/v1/executions/{view['execution_id']}/resume")
    assert status == 202
    resumed = await api.wait(view["execution_id"])
    assert resumed["status"] == "compensated", resumed
    done = await effects(api, view["execution_id"])
    assert len(done["payments.refund"]) == 1 and len(done["inventory.release"]) == 1


async def test_idempotent_start(api: Api) -> None:
    key = uuid.uuid4().hex
    value = order()
    first_status, first = await api.start("faulty_order", value, key=key)
    again_status, again = await api.start("faulty_order", value, key=key)
    assert (first_status, again_status) == (202, 200)
    assert again["execution_id"] == first["execution_id"]
    other_status, other = await api.start("faulty_order", order(), key=key)
    assert other_status == 409 and "idempotency key" in other["detail"]
    await api.wait(first["execution_id"])


async def test_cancel_compensates_what_ran(api: Api) -> None:
    trip = f"TRIP-{uuid.uuid4().hex[:8]}"
    await api.fault("hotels", {"method": "POST", "path": "/reservations", "fault": "latency=800",
                               "match_body": {"trip": trip}})
    status, started = await api.start("trip_booking", {"trip_id": trip, "customer": "G"})
    assert status == 202
    await asyncio.sleep(0.3)
    status, body = await api.post(f"/v1/executions/{started['execution_id']}/cancel",
                                  {"reason": "changed plans"})
    assert status == 202, body
    view = await api.wait(started["execution_id"])
    assert view["status"] == "compensated" and view["reason"] == "cancelled", view
    assert steps(view)["book_flight"]["status"] == "compensated"
    assert steps(view)["book_hotel"]["status"] == "compensated"
    status, body = await api.post(f"/v1/executions/{started['execution_id']}/cancel", {})
    assert status == 409


async def test_dedicated_placement_runs_in_its_own_actor(api: Api) -> None:
    ok = await api.run("faulty_order_dedicated", order())
    assert ok["status"] == "completed", ok
    assert "-exec-" in ok["placement"]["host"]
    undone = await api.run("faulty_order_dedicated", order(faults={"confirm_order": "business"}))
    assert undone["status"] == "compensated", undone
    assert undone["placement"]["host"] != ok["placement"]["host"]


async def test_200_concurrent_sagas_keep_every_ledger_consistent(api: Api) -> None:
    values = []
    for index in range(200):
        failing = ORDER_STEPS[index % 5] if index % 5 < 4 and index % 3 == 0 else None
        faults = {failing: "business"} if failing else {"charge_payment": "error-once"} \
            if index % 7 == 0 else {}
        values.append(order(faults=faults))
    # The patient copy: a 400 ms attempt timeout is a coin toss at 200 in flight on 2 cores.
    started = await asyncio.gather(*(api.start("faulty_order_patient", v) for v in values))
    assert all(status == 202 for status, _ in started)
    views = await asyncio.gather(*(api.wait(body["execution_id"], 60) for _, body in started))
    by_status: dict[str, int] = {}
    for value, view in zip(values, views, strict=True):
        by_status[view["status"]] = by_status.get(view["status"], 0) + 1
        expected = "compensated" if value["faults"] and "business" in \
            value["faults"].values() else "completed"
        assert view["status"] == expected, (value, view)
    ledgers = {s: await api.ledger(s) for s in ("inventory", "payments", "shipping", "orders")}
    for view in views:
        prefix = view["execution_id"] + ":"
        for service, entries in ledgers.items():
            mine = [e for e in entries if (e["idempotency_key"] or "").startswith(prefix)]
            forward = [e for e in mine if e["kind"] == "forward"]
            assert len(forward) <= 1, (service, mine)
            if view["status"] == "compensated" and service != "orders":
                assert len(mine) in (0, 2), (service, mine)  # done and undone, or never done
    print(f"\n200 concurrent sagas: {by_status}")


async def test_waited_start_answers_from_the_hosts_feed_as_a_read_would(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host sends a waited start's terminal view along its finish feed: the API
    answers without reading the journal, and the answer is the view a read gives."""
    service = api.stack.stack.service  # type: ignore[attr-defined]
    for host in service.pool.names:  # a waiter's first use of a host's feed reads once
        await asyncio.wait_for(service._completions.primed(host), 10)
    reads: list[str] = []
    original = service.state

    async def counted(execution_id: str) -> Any:
        reads.append(execution_id)
        return await original(execution_id)

    monkeypatch.setattr(service, "state", counted)
    inputs = [order(), order(faults={"charge_payment": "business"}),
              order(faults={"create_shipment": "business"},
                    undo_faults={"charge_payment": "business"})]
    answers = [await api.run("faulty_order", value) for value in inputs]
    assert [a["status"] for a in answers] == ["completed", "compensated", "failed"], answers
    assert reads == [], "a waited start read the journal instead of using the feed's view"
    monkeypatch.undo()
    for answer in answers:
        assert await api.wait(answer["execution_id"], 0) == answer


async def test_a_start_journals_its_opening_round_for_a_host_whose_node_it_knows(
        api: Api) -> None:
    """With the node of every host learnt from a hand-over's answer, a start is journaled
    with its host's assignment and first attempt, which that host sends as they are."""
    service = api.stack.stack.service  # type: ignore[attr-defined]
    for _ in range(20):  # each host answers a hand-over with its node
        if all(service.pool.node_of(host) for host in service.pool.names):
            break
        await api.run("faulty_order", order())
    nodes = {host: service.pool.node_of(host) for host in service.pool.names}
    assert all(nodes.values()), nodes
    view = await api.run("faulty_order", order())
    assert view["status"] == "completed", view
    status, body = await api.get(f"/v1/executions/{view['execution_id']}/events")
    assert status == 200, body
    events = body["events"]
    first = events[:4]
    assert [e["type"] for e in first] == ["execution_started", "host_assigned",
                                          "step_attempt_started", "step_attempt_succeeded"]
    assigned = first[1]
    assert nodes[assigned["host"]] == assigned["node_id"] == view["placement"]["node_id"]
    assert first[2]["step"] == ORDER_STEPS[0] and first[2]["attempt"] == 1
    assert first[0]["at"] == first[1]["at"] == first[2]["at"]  # one write, by the API
    assert sum(e["type"] == "host_assigned" for e in events) == 1
    assert all(s["attempts"] == 1 for s in view["steps"])
