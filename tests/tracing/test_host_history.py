"""A traced host emits a saga's spans from the events it journaled, not from a re-read.

One host core in this process (no Ray), a real SQLite journal, the demo services and
a real OTLP/HTTP receiver. The spans it exports must be exactly those planned from
the journal's own history, whether the host ran the execution from its start or took
it over half way (its history then begins with the journal read it resumed from).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from coordinator.core import events as ev
from coordinator.host_config import HostConfig
from coordinator.host_core import HostCore
from coordinator.journal.base import Journal, NewExecution, StoredEvent
from coordinator.telemetry.history import plan_spans
from coordinator.telemetry.ids import SagaIds
from coordinator.telemetry.setup import host_provider
from tests.faults.conftest import SAGA
from tests.runtime.hostcore import host_journal, until_started
from tests.tracing.receiver import OtlpReceiver, ReceivedSpan

Setup = tuple[Journal, HostConfig, OtlpReceiver]


@pytest.fixture
async def traced_core(demo_services: dict[str, str], tmp_path: Path) -> AsyncIterator[Setup]:
    receiver = OtlpReceiver()
    await receiver.start()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "50",
            # Its own provider: the key of the process's provider cache is the env.
            "OTEL_RESOURCE_ATTRIBUTES": f"test.run={tmp_path.name}"}
    # Built off the loop (the SDK takes locks); host cores then find it in the cache.
    await asyncio.to_thread(host_provider, otel)
    async with host_journal(demo_services, tmp_path) as (journal, config):
        yield journal, replace(config, otel_env=otel, drain_seconds=0.1), receiver
    await receiver.close()


async def create_traced(journal: Journal, owner: str, faults: dict[str, str]) -> ev.Event:
    """A new execution leased to ``owner`` with the trace ids the API would journal."""
    execution_id, now = uuid.uuid4().hex, time.time()
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    trace = {"traceparent": f"00-{trace_id}-{parent}-01", "trace_id": trace_id,
             "saga_span_id": secrets.token_hex(8), "saga_start_ns": str(time.time_ns())}
    started = ev.ExecutionStarted(at=now, execution_id=execution_id, saga=SAGA, version=1,
                                  input={"order_id": f"ORD-{execution_id[:10]}",
                                         "faults": faults}, trace=trace)
    await journal.create_execution(NewExecution(execution_id, SAGA, 1, now), [started],
                                   owner=owner, lease_until=now + 10.0)
    return started


def count_reads(core: HostCore) -> list[str]:
    """Every journal read the core makes from now on, by execution id."""
    reads: list[str] = []
    journal = core._journal  # the core's own journal connection
    read: Callable[[str], Awaitable[list[StoredEvent]]] = journal.read

    async def counted(execution_id: str) -> list[StoredEvent]:
        reads.append(execution_id)
        return await read(execution_id)

    journal.read = counted  # type: ignore[method-assign]
    return reads


def shape(span: Any) -> tuple[str, str, str, int, int]:
    if isinstance(span, ReceivedSpan):
        return (span.span_id, span.name, span.parent_span_id, span.start_ns, span.end_ns)
    return (f"{span.span_id:016x}", span.name, f"{span.parent_id:016x}", span.start_ns,
            span.end_ns)


async def check_spans(journal: Journal, config: HostConfig, receiver: OtlpReceiver,
                      started: ev.ExecutionStarted) -> None:
    """The received long-lived spans are those planned from the journal's history."""
    history = [s.event for s in await journal.read(started.execution_id)]
    assert isinstance(history[-1], ev.ExecutionCompleted), history[-1]
    ids = SagaIds.from_trace(started.trace)
    assert ids is not None
    planned = plan_spans(config.definitions[0], ids, history)
    assert any(p.name == f"saga {SAGA}" for p in planned)
    wanted = {shape(p) for p in planned}

    def done(spans: list[ReceivedSpan]) -> bool:
        return wanted <= {shape(s) for s in spans}

    spans = await receiver.wait_for(ids.trace_id_hex, done)
    long_lived = {shape(s) for s in spans if s.kind != "client"}
    assert long_lived == {shape(p) for p in planned if p.kind != "client"}


async def test_spans_of_an_execution_run_from_its_start_need_no_journal_read(
        traced_core: Setup) -> None:
    journal, config, receiver = traced_core
    core = HostCore("h1", config)
    reads = count_reads(core)
    started = await create_traced(journal, "h1", {})
    assert isinstance(started, ev.ExecutionStarted)
    assert (await core.start(started.execution_id, [started], 1))["status"] == "running"
    assert await core.wait(started.execution_id, 30.0)
    await check_spans(journal, config, receiver, started)
    assert reads == []
    await core.close()


async def test_spans_of_an_execution_taken_over_come_from_the_read_it_resumed_from(
        traced_core: Setup) -> None:
    journal, config, receiver = traced_core
    leaving = HostCore("h1", config)
    started = await create_traced(journal, "h1", {"charge_payment": "latency=800"})
    assert isinstance(started, ev.ExecutionStarted)
    execution_id = started.execution_id
    assert (await leaving.start(execution_id, [started], 1))["status"] == "running"
    await until_started(journal, execution_id, "charge_payment")
    assert await leaving.drain(10.0) == 0  # abandons the charge in flight after 0.1 s
    await leaving.close()

    taking = HostCore("h2", config)
    reads = count_reads(taking)
    assert (await taking.start(execution_id))["status"] == "running"
    assert await taking.wait(execution_id, 30.0)
    await check_spans(journal, config, receiver, started)
    assert reads == [execution_id]  # the claim's read, none at the end
    await taking.close()
