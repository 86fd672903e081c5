"""Fixtures of the HTTP layer's unit tests: the real app, service and SQLite journal.

Only the host pool is a stand-in (no Ray): these tests cover the HTTP layer, and
the pool's replies are what decide the cancel/resume paths. Every reply goes
through :class:`ContractClient`, which fails the test when a response is not
what ``/openapi.json`` documents for that route and status.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from multidict import CIMultiDictProxy

from coordinator.api import create_app
from coordinator.core import events as ev
from coordinator.core.definition import SagaDefinition
from coordinator.executions import ExecutionService, SagaCatalog
from coordinator.finish_feed import FinishFeed
from coordinator.journal.base import ExecutionStatus
from coordinator.journal.sqlite import SQLiteJournal
from coordinator.openapi import openapi_document
from coordinator.pool import HostPool

SHOP_V1 = """
name: shop
version: 1
input_schema:
  type: object
  required: [order_id, amount]
  properties:
    order_id: {type: string}
    amount: {type: number, exclusiveMinimum: 0}
    items:
      type: array
      items: {type: object, required: [sku], properties: {sku: {type: string}}}
steps:
  - name: reserve
    action: {service: stock, path: /reservations}
    compensation: {service: stock, method: DELETE, path: /reservations/1}
  - name: charge
    pivot: true
    action: {service: payments, path: /charges}
  - name: ship
    action: {service: shipping, path: /shipments}
"""

SHOP_V2 = SHOP_V1.replace("version: 1", "version: 2")

PLAIN = """
name: plain
version: 1
timeout: 90s
steps:
  - name: only
    action: {service: echo, path: /echo, body: {value: "${input}"}}
"""

READY_OK = {"journal": "ok", "ray": "ok"}


def definitions() -> list[SagaDefinition]:
    return [SagaDefinition.model_validate(yaml.safe_load(text))
            for text in (SHOP_V1, SHOP_V2, PLAIN)]


class PoolStandIn:
    """Records what the service asks of the hosts; ``answers`` holds each method's reply."""

    def __init__(self, journal: SQLiteJournal) -> None:
        self.journal = journal
        self.dispatched: list[str] = []
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []
        self.answers: dict[str, Any] = {"cancel": "accepted", "resume": "accepted"}
        self.complete_on_dispatch = False
        # The real feed a SagaHost keeps, fed by this stand-in's completions.
        self.finishes = FinishFeed()

    names = ["stand-in"]

    def host_name(self, execution_id: str, owner: str | None = None) -> str:
        return "stand-in"

    async def host_metrics(self, timeout: float) -> dict[str, dict[str, Any] | None]:
        return {"stand-in": None}  # as a host that did not answer in time

    async def finished_since(self, host: str, incarnation: str | None, cursor: int | None,
                             timeout: float, reader: str | None = None) -> dict[str, Any]:
        return await self.finishes.since(incarnation, cursor, timeout, reader)

    def lease_for(self, placement: str, execution_id: str) -> tuple[str, float] | None:
        return None

    async def dispatch(self, placement: str, execution_id: str,
                       events: list[ev.Event] | None = None,
                       fence: int | None = None, leased_to: str | None = None,
                       report_to: str | None = None) -> dict[str, str | None]:
        self.dispatched.append(execution_id)
        if self.complete_on_dispatch:
            done = ev.ExecutionCompleted(at=time.time(), output={"done": True})
            await append(self.journal, execution_id, [done], "completed")
            self.finishes.record(execution_id)
        return {"host": "stand-in", "node_id": None}

    async def call(self, placement: str, execution_id: str, method: str, *args: Any,
                   owner: str | None = None) -> Any:
        self.calls.append((method, execution_id, args))
        return self.answers.get(method)


async def append(journal: SQLiteJournal, execution_id: str, events: Sequence[ev.Event],
                 status: ExecutionStatus | None = None) -> None:
    row = await journal.get_execution(execution_id)
    assert row is not None, execution_id
    await journal.append(execution_id, row.last_seq, events, status)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: Any

    @property
    def detail(self) -> str:
        return str(self.body["detail"])


class ContractClient:
    """Sends requests and checks each reply against the OpenAPI document."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.document = openapi_document()
        self._templates = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path)
                           for path in self.document["paths"]]

    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.client.request(method, path, **kwargs) as response:
            raw = await response.read()
            text = not response.content_type.endswith("json")  # /metrics is Prometheus text
            body = raw.decode() if text else orjson.loads(raw) if raw else None
            reply = Reply(response.status, response.headers, body)
            self.check(method, path.split("?")[0], reply, response.content_type)
        return reply

    def check(self, method: str, path: str, reply: Reply, content_type: str) -> None:
        if reply.status >= 400:
            assert content_type == "application/problem+json", content_type
            self.validate("Problem", reply.body)
            assert reply.body["status"] == reply.status
        if reply.status == 503:
            assert int(reply.headers["Retry-After"]) >= 0
        operation = self.operation(method, path)
        if operation is None:
            assert reply.status in (404, 405), (method, path, reply.status)
            return
        documented = operation["responses"].get(str(reply.status))
        assert documented is not None, f"{method} {path} answered undocumented {reply.status}"
        documented = self.resolve(documented)
        media = documented["content"][content_type]
        if "$ref" in media["schema"]:
            self.validate(media["schema"]["$ref"].rsplit("/", 1)[-1], reply.body)
        else:
            assert media["schema"] == {"type": "string"} and isinstance(reply.body, str)

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        for pattern, template in self._templates:
            if pattern.match(path):
                return cast(dict[str, Any] | None,
                            self.document["paths"][template].get(method.lower()))
        return None

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" not in node:
            return node
        found: Any = self.document
        for part in node["$ref"].removeprefix("#/").split("/"):
            found = found[part]
        return cast(dict[str, Any], found)

    def validate(self, schema_name: str, body: Any) -> None:
        schema = {"$ref": f"#/components/schemas/{schema_name}",
                  "components": self.document["components"]}
        Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER
                             ).validate(body)


@dataclass
class Stack:
    api: ContractClient
    service: ExecutionService
    journal: SQLiteJournal
    pool: PoolStandIn
    ready: dict[str, Any]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    journal = SQLiteJournal(tmp_path / "journal.db")
    await journal.open()
    pool = PoolStandIn(journal)
    service = ExecutionService(SagaCatalog(definitions()), journal, cast(HostPool, pool))
    ready: dict[str, Any] = {"checks": dict(READY_OK), "raise": None}

    async def check() -> dict[str, Any]:
        if ready["raise"] is not None:
            raise ready["raise"]
        return dict(ready["checks"])

    client: TestClient[Any, Any] = TestClient(TestServer(create_app(service, ready=check)))
    await client.start_server()
    try:
        yield Stack(ContractClient(client), service, journal, pool, ready)
    finally:
        await client.close()
        await service.close()
        await journal.close()
