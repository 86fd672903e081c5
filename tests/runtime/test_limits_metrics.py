"""Admission and metrics on a real stack of their own (real Ray hosts, SQLite, services).

The stack here has fresh SagaHosts (their own namespace) and a fresh journal, so the
metrics it exposes count exactly this module's executions; its in-flight limits are
small, so a burst meets them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from coordinator.admission import AdmissionLimits
from coordinator.server import Stack
from tests.conftest import DemoStack, serving, stack_options
from tests.runtime.conftest import TERMINAL, Api

pytestmark = pytest.mark.ray
SAGA = "faulty_order"
SLOW = {"reserve_inventory": "latency=300"}  # keeps each execution in flight a while


@pytest.fixture(scope="module")
async def limited(ray_session: None, demo_services: dict[str, str],
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoStack]:
    base = tmp_path_factory.mktemp("limited")
    options = await stack_options(
        base, demo_services, patient=False, hosts=2,
        namespace=f"sagaray-limits-{uuid.uuid4().hex[:6]}", max_in_flight=20,
        max_in_flight_per_host=12)
    async with serving(options, demo_services, base / "journal.db") as served:
        yield served
    cast(Stack, served.stack).pool.shutdown()


@pytest.fixture
async def api(limited: DemoStack) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield Api(session, limited)


def order(**more: Any) -> dict[str, Any]:
    return {"order_id": f"o-{uuid.uuid4().hex[:8]}", "amount": 5, **more}


def stack_of(api: Api) -> Stack:
    stack = api.stack.stack
    assert isinstance(stack, Stack)
    return stack


async def scrape(api: Api) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with api.session.get(api.stack.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await response.text()
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def total(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    """The sum of ``name`` over every series carrying ``labels`` (over hosts, say)."""
    wanted = set(labels.items())
    return sum(value for (metric, have), value in found.items()
               if metric == name and wanted <= have)


# Runs first in this module: the hosts' counters hold exactly these two executions.
async def test_metrics_count_a_completed_and_a_compensated_saga(api: Api) -> None:
    done = await api.run(SAGA, order(faults={"notify": "error-once"}))
    undone = await api.run(SAGA, order(faults={"create_shipment": "business"}))
    assert (done["status"], undone["status"]) == ("completed", "compensated")
    found = await scrape(api)
    assert total(found, "sagaray_executions_started_total", saga=SAGA) == 2
    assert total(found, "sagaray_executions_ended_total", saga=SAGA, status="completed") == 1
    assert total(found, "sagaray_executions_ended_total", saga=SAGA, status="compensated") == 1
    assert total(found, "sagaray_executions_ended_total", status="failed") == 0
    # 5 steps succeed in the first (notify on its second attempt), 2 in the second.
    assert total(found, "sagaray_step_attempts_total", outcome="succeeded") == 7
    assert total(found, "sagaray_step_attempts_total", outcome="retryable") == 1
    assert total(found, "sagaray_step_attempts_total", outcome="business_failure") == 1
    assert total(found, "sagaray_retries_total", phase="action") == 1
    assert total(found, "sagaray_compensation_attempts_total", outcome="succeeded") == 2
    assert total(found, "sagaray_compensations_total", reason="step_failed") == 1
    assert total(found, "sagaray_compensations_total", reason="cancelled") == 0
    assert total(found, "sagaray_saga_duration_seconds_count", saga=SAGA) == 2
    assert total(found, "sagaray_step_duration_seconds_count", saga=SAGA) == 7
    assert total(found, "sagaray_journal_append_seconds_count") >= 2 * 6
    assert total(found, "sagaray_journal_batch_size_count") >= 1
    assert found[("sagaray_hosts", frozenset())] == 2
    assert total(found, "sagaray_host_up") == 2
    assert found[("sagaray_executions_in_flight_limit", frozenset())] == 20
    # Both ended: the in-flight count drops to 0 at the next refresh from the journal.
    for _ in range(50):
        if (await scrape(api))[("sagaray_executions_in_flight", frozenset())] == 0:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the in-flight gauge never came back to 0")


async def burst(api: Api, count: int) -> tuple[list[str], list[tuple[int, Any, str | None]]]:
    """``count`` starts at once: the ids accepted, and every refusal (status, body, header)."""
    async def one() -> tuple[int, Any, str | None]:
        url = f"{api.stack.url}/v1/sagas/{SAGA}/executions"
        async with api.session.post(url, json={"input": order(faults=SLOW)}) as response:
            return response.status, await response.json(), response.headers.get("Retry-After")

    answers = await asyncio.gather(*(one() for _ in range(count)))
    accepted = [body["execution_id"] for status, body, _ in answers if status == 202]
    refused = [answer for answer in answers if answer[0] != 202]
    return accepted, refused


async def finish_all(api: Api, ids: list[str]) -> None:
    views = await asyncio.gather(*(api.wait(execution_id, 60) for execution_id in ids))
    assert all(view["status"] == "completed" for view in views), \
        [view["status"] for view in views if view["status"] in TERMINAL]


async def test_a_burst_over_the_limit_gets_429s_and_loses_no_start(api: Api) -> None:
    stack = stack_of(api)
    before = len(await stack.journal.non_terminal())
    rows_before = len((await stack.journal.list_executions(limit=500)).items)
    accepted, refused = await burst(api, 80)
    assert len(accepted) >= 20 and refused, (len(accepted), len(refused))
    for status, body, retry_after in refused:
        assert status == 429, body
        assert retry_after is not None and int(retry_after) >= 1
        assert body["status"] == 429 and body["scope"] in ("total", "host")
        assert body["limit"] in (20, 12) and "too many executions in flight" in body["detail"]
    # Every 202 is journaled and runs to its end; a 429 left no row behind.
    await finish_all(api, accepted)
    rows = (await stack.journal.list_executions(limit=500)).items
    assert len(rows) == rows_before + len(accepted)
    assert {row.execution_id for row in rows} >= set(accepted)
    assert before == 0 and await stack.journal.live_counts() == {}


async def test_per_host_limit_spreads_starts_over_hosts_with_room(api: Api) -> None:
    stack = stack_of(api)
    admission = stack.service.admission
    assert admission is not None
    await admission.refresh()  # the burst above has ended: start from the journal's counts
    admission.limits = AdmissionLimits(total=100, per_host=4)
    try:
        accepted, refused = await burst(api, 30)
    finally:
        admission.limits = AdmissionLimits(total=20, per_host=12)
    assert refused and all(body["scope"] == "host" for _, body, _ in refused)
    hosts = [stack.pool.host_name(execution_id) for execution_id in accepted]
    # Each host takes at most 4 until the next refresh sees some of them end.
    assert set(hosts) == set(stack.pool.names)
    assert len(accepted) >= 8
    await finish_all(api, accepted)


async def test_history_limit_compensates_then_fails(api: Api) -> None:
    view = await api.run("limited_order", order(faults={"charge_payment": "error"}))
    assert view["status"] == "failed" and view["reason"] == "history_limit", view
    assert "limits.max_attempts is 6" in view["error"]
    steps = {step["name"]: step for step in view["steps"]}
    assert steps["reserve_inventory"]["status"] == "compensated"
    assert steps["charge_payment"]["status"] == "failed"
    assert steps["charge_payment"]["attempts"] == 5  # 1 + 5 = max_attempts: no seventh
    execution_id = view["execution_id"]
    undone = await api.ledger("inventory", f"{execution_id}:reserve_inventory:compensation")
    assert undone, "the reservation was not undone"
    charges = await api.ledger("payments", f"{execution_id}:charge_payment:action")
    assert len(charges) <= 5


@ray.remote(num_cpus=0)
class SlowHost:
    """Never answers ``metrics`` (within the test's life): a host whose loop is stuck."""

    async def metrics(self) -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {}


async def test_a_slow_host_does_not_hold_up_the_scrape(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = stack_of(api).pool
    slow = SlowHost.remote()  # type: ignore[attr-defined]
    second = pool.names[1]
    real = pool._handles[second]

    async def keep_the_stand_in() -> None:
        """The 1 s membership refresh would put the real handle back mid-scrape."""

    monkeypatch.setattr(pool, "refresh", keep_the_stand_in)
    pool._handles[second] = slow
    names = pool.names
    try:
        for _ in range(5):
            found = await scrape(api)  # would hang (until the test's timeout) without one
            assert found[("sagaray_host_up", frozenset({("host", names[1])}))] == 0
            # The answering host may itself miss the 2 s budget on a loaded machine
            # (a previous test's work, a host just restarted): scrape again.
            if found[("sagaray_host_up", frozenset({("host", names[0])}))] == 1:
                break
    finally:
        pool._handles[second] = real
        monkeypatch.undo()
        ray.kill(slow)
    assert found[("sagaray_host_up", frozenset({("host", names[0])}))] == 1
    # The answering host is in the exposition; the silent one is left out.
    assert ("sagaray_host_executions_running", frozenset({("host", names[0])})) in found
    assert ("sagaray_host_executions_running", frozenset({("host", names[1])})) not in found
