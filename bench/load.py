"""Load generators: sagas through the Sagaray HTTP API, and the same calls made directly.

Both run ``n`` sagas with ``concurrency`` workers (closed loop) and time each saga
from the moment its first request is handed to aiohttp to the moment its outcome
is known. The direct ("raw") saga is the physical floor: the same three calls with
the same bodies, headers and idempotency keys, the same retries on 503 and the
same compensations in reverse order, with no journal and no coordinator.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

TERMINAL = frozenset({"completed", "compensated", "failed"})
STEPS = ("reserve_inventory", "charge_payment", "create_shipment")
MAX_ATTEMPTS = 3  # as the bench saga's defaults.retry


@dataclass
class Batch:
    """What one closed-loop batch measured."""

    n: int
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, one per saga
    outcomes: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


# -- inputs -------------------------------------------------------------------------


def make_inputs(mix: str, n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Saga inputs for a mix: ``ok``, ``compensate`` (20 % refused at the last step),
    ``retry`` (each step's first attempt answers 503 with probability 10 %)."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    inputs = []
    for i in range(n):
        faults: dict[str, str] = {}
        if mix == "compensate" and rng.random() < 0.2:
            faults["create_shipment"] = "business"
        elif mix == "retry":
            for step in STEPS:
                if rng.random() < 0.1:
                    faults[step] = "error-once"
        elif mix not in ("ok", "compensate"):
            raise ValueError(f"unknown mix {mix!r}")
        value: dict[str, Any] = {"order_id": f"{run}-{i}"}
        if faults:
            value["faults"] = faults
        inputs.append(value)
    return inputs


async def closed_loop(n: int, concurrency: int,
                      one: Callable[[int], Awaitable[str]]) -> Batch:
    """Run ``one(i)`` for i in 0..n-1 with ``concurrency`` workers; time each."""
    batch = Batch(n, concurrency, 0.0)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            index = next_index
            next_index += 1
            start = time.perf_counter()
            try:
                outcome = await one(index)
            except Exception as error:  # recorded, never hidden
                outcome = "error"
                if len(batch.errors) < 5:
                    batch.errors.append(repr(error)[:300])
            batch.latencies.append(time.perf_counter() - start)
            batch.outcomes[outcome] = batch.outcomes.get(outcome, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    batch.seconds = time.perf_counter() - began
    return batch


# -- through Sagaray ----------------------------------------------------------------


async def start_and_wait(session: aiohttp.ClientSession, api: str, saga: str,
                         value: dict[str, Any], wait: float = 60.0) -> str:
    """POST a start with ``?wait``; follow with ``GET ?wait`` until the outcome is known."""
    url = f"{api}/v1/sagas/{saga}/executions?wait={wait:g}"
    async with session.post(url, json={"input": value}) as response:
        body = await response.json(content_type=None)
        if response.status not in (200, 202):
            raise RuntimeError(f"start answered {response.status}: {body}")
    status, execution_id = body["status"], body["execution_id"]
    while status not in TERMINAL:
        async with session.get(f"{api}/v1/executions/{execution_id}?wait={wait:g}") as response:
            status = (await response.json(content_type=None))["status"]
    return str(status)


async def start_only(session: aiohttp.ClientSession, api: str, saga: str,
                     value: dict[str, Any]) -> tuple[str, float, float]:
    """POST a start without waiting: (execution id, send time, answer time) in time.time()."""
    sent = time.time()
    async with session.post(f"{api}/v1/sagas/{saga}/executions", json={"input": value}) as response:
        body = await response.json(content_type=None)
        answered = time.time()
        if response.status != 202:
            raise RuntimeError(f"start answered {response.status}: {body}")
    return str(body["execution_id"]), sent, answered


async def sagaray_batch(session: aiohttp.ClientSession, api: str, saga: str,
                        inputs: list[dict[str, Any]], concurrency: int) -> Batch:
    return await closed_loop(len(inputs), concurrency,
                             lambda i: start_and_wait(session, api, saga, inputs[i]))


# -- direct calls (the floor) -------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    service: str
    method: str
    path: str
    body: dict[str, Any] | None


def _action(step: str, order_id: str) -> _Call:
    if step == "reserve_inventory":
        return _Call("inventory", "POST", "/reservations",
                     {"order_id": order_id, "items": [{"sku": "BENCH-1", "qty": 1}]})
    if step == "charge_payment":
        return _Call("payments", "POST", "/charges", {"order_id": order_id, "amount": 10})
    return _Call("shipping", "POST", "/shipments",
                 {"order_id": order_id, "address": "1 Bench Road"})


def _undo(step: str, output: dict[str, Any]) -> _Call:
    if step == "reserve_inventory":
        return _Call("inventory", "DELETE", f"/reservations/{output['reservation_id']}", None)
    if step == "charge_payment":
        return _Call("payments", "POST", f"/charges/{output['charge_id']}/refund", None)
    return _Call("shipping", "DELETE", f"/shipments/{output['shipment_id']}", None)


async def _send(session: aiohttp.ClientSession, urls: dict[str, str], call: _Call,
                headers: dict[str, str]) -> tuple[int, Any]:
    status, payload = 0, None
    for _ in range(MAX_ATTEMPTS):
        async with session.request(call.method, urls[call.service] + call.path, json=call.body,
                                   headers=headers) as response:
            status = response.status
            payload = await response.json(content_type=None)
        if status != 503:
            break
    return status, payload


async def raw_saga(session: aiohttp.ClientSession, urls: dict[str, str],
                   value: dict[str, Any]) -> str:
    execution_id = uuid.uuid4().hex
    faults = value.get("faults", {})
    done: list[tuple[str, dict[str, Any]]] = []
    for step in STEPS:
        headers = {"Idempotency-Key": f"{execution_id}:{step}:action",
                   "X-Fault": faults.get(step, "")}
        status, output = await _send(session, urls, _action(step, value["order_id"]), headers)
        if 200 <= status < 300:
            done.append((step, output))
            continue
        for undone, undone_output in reversed(done):
            undo_headers = {"Idempotency-Key": f"{execution_id}:{undone}:compensation",
                            "X-Fault": ""}
            await _send(session, urls, _undo(undone, undone_output), undo_headers)
        return "compensated"
    return "completed"


async def raw_batch(session: aiohttp.ClientSession, urls: dict[str, str],
                    inputs: list[dict[str, Any]], concurrency: int) -> Batch:
    return await closed_loop(len(inputs), concurrency,
                             lambda i: raw_saga(session, urls, inputs[i]))


def client_session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=max(concurrency * 2, 100), keepalive_timeout=30)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=120))
