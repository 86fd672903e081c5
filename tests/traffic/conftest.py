"""Coordinator stacks on the session's Ray, calling multi-instance demo services.

``traffic_stack`` builds a stack with a namespace of its own (so its own SagaHost
actors), its own SQLite journal, the test sagas below and a services file whose
services list several instances (``start_instances``) with the traffic fields the
test asks for (every service the sagas call runs, one instance unless the test asks
for more). Everything is torn down after the test.

The sagas:
- ``traffic_order``: reserve (inventory, POST /reservations, undone by DELETE), then
  ship (shipping) and a pivot confirm (orders). Generous retries: a retry that lands
  on a healthy instance must be enough, never the saga's end.
- ``traffic_slow``: one call to shipping, for saturating its bulkhead.
- ``traffic_fast``: one call to notifications, the service that must keep answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
import ray
import yaml
from aiohttp import web

from coordinator.server import ServeOptions, Stack, build_stack
from services.runner import RunningInstances, start_instances, write_services_file
from tests.conftest import DemoStack, serve_on_loopback
from tests.runtime.conftest import TERMINAL, Api

RETRY = {"max_attempts": 30, "initial_backoff": "20ms", "max_backoff": "300ms"}
SAGAS: dict[str, dict[str, Any]] = {
    "traffic_order": {
        "defaults": {"timeout": "3s", "retry": RETRY, "compensation_retry": RETRY},
        "steps": [
            {"name": "reserve",
             "action": {"service": "inventory", "path": "/reservations",
                        "body": {"order_id": "${input.order_id}",
                                 "items": [{"sku": "T-1", "qty": 1}]}},
             "compensation": {"service": "inventory", "method": "DELETE",
                              "path": "/reservations/${steps.reserve.output.reservation_id}"}},
            {"name": "ship",
             "action": {"service": "shipping", "path": "/shipments",
                        "body": {"order_id": "${input.order_id}", "address": "here"}},
             "compensation": {"service": "shipping", "method": "DELETE",
                              "path": "/shipments/${steps.ship.output.shipment_id}"}},
            {"name": "confirm", "pivot": True,
             "action": {"service": "orders", "path": "/orders/${input.order_id}/confirm"}},
        ],
    },
    "traffic_slow": {
        "defaults": {"timeout": "10s", "retry": {**RETRY, "max_attempts": 100}},
        "steps": [{"name": "ship", "action": {
            "service": "shipping", "path": "/shipments",
            "body": {"order_id": "${input.order_id}", "address": "there"}}}],
    },
    "traffic_fast": {
        "defaults": {"timeout": "3s", "retry": RETRY},
        "steps": [{"name": "notify", "action": {
            "service": "notifications", "path": "/emails",
            "body": {"to": "x@example.com", "order_id": "${input.order_id}"}}}],
    },
}


SERVICES = ("inventory", "shipping", "orders", "notifications")


def write_sagas(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in SAGAS.items():
        document = {"name": name, "version": 1, "placement": "shared", **body}
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def order_input() -> dict[str, Any]:
    return {"order_id": f"T-{uuid.uuid4().hex[:10]}"}


@dataclass
class TrafficStack:
    api: Api
    built: Stack
    namespace: str
    instances: dict[str, RunningInstances]
    _runner: web.AppRunner
    timings: dict[str, float] = field(default_factory=dict)

    async def host_traffic(self) -> dict[str, dict[str, Any]]:
        """Host name -> its invoker's ``traffic_snapshot()``."""
        async def one(name: str) -> tuple[str, dict[str, Any]]:
            handle = await asyncio.to_thread(ray.get_actor, name, namespace=self.namespace)
            return name, dict(await handle.traffic.remote())

        return dict(await asyncio.gather(*(one(n) for n in self.built.pool.names)))

    async def run_all(self, saga: str, count: int, *, spread: float = 0.0,
                      concurrency: int = 64) -> list[dict[str, Any]]:
        """Start ``count`` executions (``spread`` s apart), wait for each to end."""
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> dict[str, Any]:
            await asyncio.sleep(index * spread)
            async with gate:
                status, body = await self.api.start(saga, order_input())
            assert status == 202, body
            deadline = time.monotonic() + 180
            while True:
                found = await self.api.wait(body["execution_id"], 60)
                if found["status"] in TERMINAL or time.monotonic() > deadline:
                    return found

        return list(await asyncio.gather(*(one(i) for i in range(count))))

    async def events(self, execution_id: str) -> list[dict[str, Any]]:
        status, body = await self.api.get(f"/v1/executions/{execution_id}/events")
        assert status == 200, body
        return list(body["events"])

    async def close(self) -> None:
        await self._runner.cleanup()
        self.built.pool.shutdown()
        await self.built.close()
        for running in self.instances.values():
            await running.close()


class TrafficFactory(Protocol):
    async def __call__(self, counts: Mapping[str, int],
                       traffic: Mapping[str, Mapping[str, Any]] | None = None, *,
                       hosts: int = 1) -> TrafficStack: ...


@pytest.fixture
async def traffic_stack(ray_session: None, tmp_path: Path) -> AsyncIterator[TrafficFactory]:
    made: list[TrafficStack] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(counts: Mapping[str, int],
                   traffic: Mapping[str, Mapping[str, Any]] | None = None, *,
                   hosts: int = 1) -> TrafficStack:
        namespace = f"traffic-{uuid.uuid4().hex[:8]}"
        base = tmp_path / namespace
        await asyncio.to_thread(write_sagas, base / "sagas")
        wanted = {name: 1 for name in SERVICES} | dict(counts)
        instances = {name: await start_instances(name, count) for name, count in wanted.items()}
        urls = {name: running.urls for name, running in instances.items()}
        await asyncio.to_thread(write_services_file, urls, base / "services.yaml", traffic)
        options = ServeOptions(sagas_dir=base / "sagas", services_file=base / "services.yaml",
                               journal_url=f"sqlite:///{base / 'journal.db'}", hosts=hosts,
                               namespace=namespace)
        started = time.monotonic()
        built = await build_stack(options)
        runner, url = await serve_on_loopback(built.app)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180))
        sessions.append(session)
        single = {name: running.urls[0] for name, running in instances.items()}
        api = Api(session, DemoStack(url, single, built, base / "journal.db"))
        stack = TrafficStack(api, built, namespace, instances, runner)
        made.append(stack)
        print(f"\nstack {namespace}: {hosts} host(s), instances "
              f"{ {n: len(r.urls) for n, r in instances.items()} }, up in "
              f"{time.monotonic() - started:.1f} s")
        return stack

    try:
        yield make
    finally:
        for stack in reversed(made):
            with contextlib.suppress(Exception):
                await stack.close()
        for session in sessions:
            await session.close()
