"""``sagaray demo``: local Ray, SQLite, the demo services and the coordinator in one command.

It starts a handful of sagas through the HTTP API, some forced to fail at
different steps, prints each step change as it happens, then each outcome with
its steps and compensations. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from coordinator import eventloop
from coordinator.server import ServeOptions, build_stack, init_ray

WORKDIR = Path(".sagaray/demo")


@dataclass(frozen=True)
class Scenario:
    label: str
    saga: str
    input: dict[str, Any]
    expect: str
    fault: tuple[str, dict[str, Any]] | None = None  # (service, /_faults rule)
    cancel_after: float | None = None


def _order(order_id: str, amount: float = 120.0, sku: str = "SKU-1") -> dict[str, Any]:
    return {"order_id": order_id, "customer": "Ada", "email": "ada@example.com",
            "amount": amount, "items": [{"sku": sku, "qty": 2}], "address": "1 Loop Road"}


def _trip(trip_id: str, car: bool) -> dict[str, Any]:
    return {"trip_id": trip_id, "customer": "Grace", "car": car}


SCENARIOS = [
    Scenario("order ok", "order_fulfillment", _order("ORD-1"), "completed"),
    Scenario("order, card declined", "order_fulfillment", _order("ORD-2", 50_000),
             "compensated"),
    Scenario("order, shipping refuses", "order_fulfillment", _order("ORD-3"), "compensated",
             fault=("shipping", {"method": "POST", "path": "/shipments", "fault": "business",
                                 "match_body": {"order_id": "ORD-3"}})),
    Scenario("order, email 503 once", "order_fulfillment", _order("ORD-4"), "completed",
             fault=("notifications", {"method": "POST", "path": "/emails", "fault": "error",
                                      "times": 1, "match_body": {"order_id": "ORD-4"}})),
    Scenario("trip with car", "trip_booking", _trip("TRIP-1", True), "completed"),
    Scenario("trip, car refused", "trip_booking", _trip("TRIP-2", True), "compensated",
             fault=("cars", {"method": "POST", "path": "/rentals", "fault": "business",
                             "match_body": {"trip": "TRIP-2"}})),
    Scenario("trip cancelled", "trip_booking", _trip("TRIP-3", False), "compensated",
             fault=("hotels", {"method": "POST", "path": "/reservations", "fault": "latency=1500",
                               "match_body": {"trip": "TRIP-3"}}),
             cancel_after=0.5),
]


@dataclass
class Tracker:
    """Prints each step change of one execution once."""

    label: str
    execution_id: str
    seen: dict[str, str] = field(default_factory=dict)
    status: str = "running"

    def update(self, view: dict[str, Any]) -> None:
        for step in view["steps"]:
            status = step["status"]
            if self.seen.get(step["name"], "pending") != status:
                detail = f"  ({step['error']})" if step.get("error") and status == "failed" else ""
                print(f"  {self.label:26} {step['name']:18} -> {status}{detail}", flush=True)
                self.seen[step["name"]] = status
        if view["status"] != self.status:
            self.status = view["status"]
            print(f"  {self.label:26} {'SAGA':18} => {self.status}", flush=True)


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _start_scenario(session: aiohttp.ClientSession, api: str, urls: dict[str, str],
                          scenario: Scenario) -> Tracker:
    if scenario.fault is not None:
        service, rule = scenario.fault
        async with session.post(f"{urls[service]}/_faults", json=rule) as response:
            response.raise_for_status()
    async with session.post(f"{api}/v1/sagas/{scenario.saga}/executions",
                            json={"input": scenario.input}) as response:
        body = await response.json()
        if response.status != 202:
            raise RuntimeError(f"start of {scenario.label} answered {response.status}: {body}")
    print(f"  {scenario.label:26} started {body['execution_id']}", flush=True)
    return Tracker(scenario.label, body["execution_id"])


async def _cancel_later(session: aiohttp.ClientSession, api: str, tracker: Tracker,
                        delay: float) -> None:
    await asyncio.sleep(delay)
    async with session.post(f"{api}/v1/executions/{tracker.execution_id}/cancel",
                            json={"reason": "customer changed their mind"}) as response:
        print(f"  {tracker.label:26} cancel requested -> HTTP {response.status}", flush=True)


async def _watch(session: aiohttp.ClientSession, api: str, trackers: list[Tracker],
                 timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    finals: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(finals) < len(trackers) and time.monotonic() < deadline:
        for tracker in trackers:
            if tracker.execution_id in finals:
                continue
            async with session.get(f"{api}/v1/executions/{tracker.execution_id}") as response:
                view = await response.json()
            tracker.update(view)
            if view["status"] in ("completed", "compensated", "failed"):
                finals[tracker.execution_id] = view
        await asyncio.sleep(0.1)
    return finals


def _report(scenarios: list[Scenario], trackers: list[Tracker],
            finals: dict[str, dict[str, Any]]) -> bool:
    print("\nOutcomes")
    all_as_expected = True
    for scenario, tracker in zip(scenarios, trackers, strict=True):
        view = finals.get(tracker.execution_id, {"status": "unfinished", "steps": []})
        ok = view["status"] == scenario.expect
        all_as_expected &= ok
        reason = f" ({view.get('reason')})" if view.get("reason") else ""
        print(f"{'ok  ' if ok else 'BAD '} {scenario.label:26} {view['status']}{reason}"
              f"  expected {scenario.expect}  id {tracker.execution_id}")
        for step in view["steps"]:
            undo = step["compensation"]
            extra = f", undo {undo['status']} after {undo['attempts']} attempt(s)" if undo else ""
            print(f"       {step['name']:18} {step['status']:20} "
                  f"attempts {step['attempts']}{extra}")
    return all_as_expected


def _fresh_workdir() -> None:
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)


async def run_demo(port: int = 8080, keep: bool = False) -> int:
    from services.runner import start_services, write_services_file

    await asyncio.to_thread(_fresh_workdir)
    running = await start_services()
    services_file = WORKDIR / "services.yaml"
    await asyncio.to_thread(write_services_file, running.urls, services_file)
    print("demo services: " + ", ".join(f"{n} {u}" for n, u in running.urls.items()))
    options = ServeOptions(services_file=services_file, hosts=2,
                           journal_url=f"sqlite:///{WORKDIR / 'journal.db'}",
                           namespace="sagaray-demo")
    stack = await build_stack(options)
    runner = web.AppRunner(stack.app, access_log=None)
    await runner.setup()
    api_port = _free_port(port)
    await web.TCPSite(runner, "127.0.0.1", api_port).start()
    api = f"http://127.0.0.1:{api_port}"
    print(f"coordinator API: {api} (journal {WORKDIR / 'journal.db'}, 2 SagaHosts on Ray)\n")
    try:
        async with aiohttp.ClientSession() as session:
            trackers = [await _start_scenario(session, api, running.urls, s) for s in SCENARIOS]
            cancels = [asyncio.create_task(_cancel_later(session, api, t, s.cancel_after))
                       for s, t in zip(SCENARIOS, trackers, strict=True) if s.cancel_after]
            finals = await _watch(session, api, trackers)
            await asyncio.gather(*cancels)
        good = _report(SCENARIOS, trackers, finals)
        if keep:
            print(f"\nThe coordinator keeps serving: curl {api}/v1/executions  (Ctrl-C stops)")
            await asyncio.Event().wait()
        return 0 if good else 1
    finally:
        await runner.cleanup()
        await stack.close()
        await running.close()


def main(port: int = 8080, keep: bool = False) -> int:
    # The demo's flights service demands this token, and the coordinator sends it from
    # the environment: the services file holds only ${env:FLIGHTS_TOKEN}.
    os.environ.setdefault("FLIGHTS_TOKEN", secrets.token_hex(16))
    init_ray(None, "sagaray-demo")
    loop = eventloop.new_event_loop()  # the loop `sagaray serve` runs on
    task = loop.create_task(run_demo(port, keep))
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        print("\nstopped")
        return 130
    finally:
        loop.close()
        import ray

        ray.shutdown()
