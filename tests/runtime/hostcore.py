"""One host core in the test process: real SQLite journal, real demo services, no Ray.

Shared by the tests that pin a host core's rules down step by step (draining, the
opening round); the ``setup`` fixture in this folder's conftest builds on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator.core import events as ev
from coordinator.core.definition import SagaDefinition
from coordinator.core.opening import opening_round
from coordinator.host_config import HostConfig
from coordinator.journal.base import Journal, NewExecution
from coordinator.journal.factory import journal_from_url
from coordinator.loader import load_registry
from coordinator.server import endpoints_of
from services.runner import write_services_file
from tests.faults.conftest import SAGA, write_crash_order


@contextlib.asynccontextmanager
async def host_journal(demo_services: dict[str, str],
                       tmp_path: Path) -> AsyncIterator[tuple[Journal, HostConfig]]:
    """A journal and a host configuration for the ``crash_order`` saga."""
    await asyncio.to_thread(write_crash_order, tmp_path / "sagas")
    await asyncio.to_thread(write_services_file, demo_services, tmp_path / "services.yaml")
    registry = await asyncio.to_thread(load_registry, tmp_path / "sagas",
                                       tmp_path / "services.yaml")
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    config = HostConfig(journal_url=url, definitions=tuple(registry.all()),
                        endpoints=endpoints_of(registry.services), lease_seconds=10.0)
    journal = journal_from_url(url)
    await journal.open()
    yield journal, config
    await journal.close()


async def create(journal: Journal, owner: str, faults: dict[str, str],
                 opening: tuple[SagaDefinition, str | None] | None = None) -> list[ev.Event]:
    """A new execution leased to ``owner`` (fence 1), as the API creates one; with
    ``opening`` (the definition, the node named), with its opening round."""
    execution_id, now = uuid.uuid4().hex, time.time()
    started = ev.ExecutionStarted(at=now, execution_id=execution_id, saga=SAGA, version=1,
                                  input={"order_id": f"ORD-{execution_id[:10]}",
                                         "faults": faults})
    events = [started]
    if opening is not None:
        events += opening_round(opening[0], started, now, owner, opening[1])
    await journal.create_execution(NewExecution(execution_id, SAGA, 1, now), events,
                                   owner=owner, lease_until=now + 10.0)
    return events


async def events_of(journal: Journal, execution_id: str) -> list[ev.Event]:
    return [stored.event for stored in await journal.read(execution_id)]


async def until_started(journal: Journal, execution_id: str, step: str) -> None:
    for _ in range(400):
        if any(isinstance(e, ev.StepAttemptStarted) and e.step == step
               for e in await events_of(journal, execution_id)):
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{step} of {execution_id} never started")


async def charges(demo_services: dict[str, str], execution_id: str) -> list[dict[str, Any]]:
    return await effects(demo_services, "payments", execution_id, "charge_payment")


async def effects(demo_services: dict[str, str], service: str, execution_id: str,
                  step: str) -> list[dict[str, Any]]:
    """The service's ledger entries for the step's action of that execution."""
    async with aiohttp.ClientSession() as session, \
            session.get(f"{demo_services[service]}/_ledger") as response:
        entries = (await response.json())["entries"]
    return [e for e in entries if e["idempotency_key"] == f"{execution_id}:{step}:action"]
