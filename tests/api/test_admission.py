"""Admission control: the counting and placement logic, the 429 it answers through the
API (no journal row for a refused start), and its flags and variables."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer

from coordinator.admission import Admission, AdmissionLimits
from coordinator.api import create_app
from coordinator.cli import build_parser, main
from coordinator.client_cli import serve_options
from coordinator.errors import TooManyRequests
from coordinator.executions import ExecutionService, SagaCatalog
from coordinator.journal.sqlite import SQLiteJournal
from coordinator.pool import HostPool
from coordinator.pool_hashing import rendezvous

from .conftest import ContractClient, PoolStandIn, definitions

HOSTS = ["h-0", "h-1", "h-2"]
ORDER = {"order_id": "o-1", "amount": 12.5}


def host_of(execution_id: str) -> str:
    return HOSTS[rendezvous(execution_id, HOSTS)]


def admission(total: int = 100, per_host: int = 100,
              counts: dict[str | None, int] | None = None) -> Admission:
    async def live_counts() -> dict[str | None, int]:
        return dict(counts or {})

    return Admission(AdmissionLimits(total, per_host), lambda: HOSTS, host_of, live_counts)


def test_total_limit_refuses_with_the_numbers_and_counts_nothing() -> None:
    gate = admission(total=3)
    tickets = [gate.reserve(shared=True) for _ in range(3)]
    assert gate.total == 3 and all(t.host == host_of(t.execution_id) for t in tickets)
    with pytest.raises(TooManyRequests) as refused:
        gate.reserve(shared=True)
    assert refused.value.status == 429 and refused.value.retry_after == 1.0
    assert refused.value.extra == {"in_flight": 3, "limit": 3, "scope": "total"}
    assert "--max-in-flight" in refused.value.detail
    assert gate.total == 3 and gate.refused == {"total": 1, "host": 0}
    gate.release(tickets[0])
    assert gate.total == 2
    gate.reserve(shared=False)  # dedicated: counts in total, on no shared host
    assert gate.total == 3 and sum(gate.by_host.values()) == 2


def test_ids_are_drawn_for_a_host_with_room() -> None:
    gate = admission(per_host=2)
    for _ in range(6):  # three hosts, two each: every start lands where there is room
        gate.reserve(shared=True)
    assert gate.by_host == {name: 2 for name in HOSTS}
    with pytest.raises(TooManyRequests) as refused:
        gate.reserve(shared=True)
    assert refused.value.extra["scope"] == "host"
    assert "--max-in-flight-per-host" in refused.value.detail


def test_a_given_id_goes_to_its_own_host_or_is_refused() -> None:
    gate = admission(per_host=1)
    first = gate.reserve(shared=True, execution_id="abc")
    assert (first.execution_id, first.host) == ("abc", host_of("abc"))
    other = next(f"x{n}" for n in range(100) if host_of(f"x{n}") == host_of("abc"))
    with pytest.raises(TooManyRequests):
        gate.reserve(shared=True, execution_id=other)


async def test_refresh_takes_the_journal_counts_plus_starts_not_yet_written() -> None:
    counts: dict[str | None, int] = {"h-0": 5, "h-1": 1, None: 2, "gone-host": 4}
    gate = admission(counts=counts)
    ticket = gate.reserve(shared=True)
    assert ticket.host is not None
    await gate.refresh()
    # Unowned and unknown owners count in total only; the unwritten start counts too.
    assert gate.total == 13
    expected = {"h-0": 5, "h-1": 1}
    expected[ticket.host] = expected.get(ticket.host, 0) + 1
    assert gate.by_host == expected
    gate.confirm(ticket)
    counts[ticket.host] = counts.get(ticket.host, 0) + 1  # now the journal holds it
    await gate.refresh()
    assert gate.total == 13 and gate.by_host == expected
    gate.release(ticket)  # settled already: no effect
    assert gate.total == 13


async def test_a_start_written_while_the_journal_is_read_is_not_missed() -> None:
    tickets: list[Any] = []

    async def live_counts() -> dict[str | None, int]:
        # The row is written while the query runs; the query does not see it.
        gate.confirm(tickets[0])
        return {}

    gate = Admission(AdmissionLimits(10, 10), lambda: HOSTS, host_of, live_counts)
    tickets.append(gate.reserve(shared=True))
    await gate.refresh()
    assert gate.total == 1


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AdmissionLimits(0, 5)


# -- through the API ------------------------------------------------------------


@pytest.fixture
async def full_api(tmp_path: Path) -> AsyncIterator[tuple[ContractClient, SQLiteJournal,
                                                          Admission]]:
    journal = SQLiteJournal(tmp_path / "journal.db")
    await journal.open()
    pool = PoolStandIn(journal)
    gate = Admission(AdmissionLimits(2, 10), lambda: pool.names, pool.host_name,
                     journal.live_counts)
    service = ExecutionService(SagaCatalog(definitions()), journal, cast(HostPool, pool),
                               admission=gate)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(service)))
    await client.start_server()
    try:
        yield ContractClient(client), journal, gate
    finally:
        await client.close()
        await journal.close()


async def test_a_start_over_the_limit_is_429_and_writes_nothing(
        full_api: tuple[ContractClient, SQLiteJournal, Admission]) -> None:
    api, journal, gate = full_api
    for _ in range(2):
        assert (await api.call("POST", "/v1/sagas/shop/executions",
                               json={"input": ORDER})).status == 202
    refused = await api.call("POST", "/v1/sagas/shop/executions", json={"input": ORDER},
                             headers={"Idempotency-Key": "k-1"})
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.body["scope"] == "total" and refused.body["limit"] == 2
    assert len((await journal.list_executions()).items) == 2
    assert await journal.live_counts() == {None: 2}
    # A repeat of a known key takes no room: its reservation is released.
    gate.limits = AdmissionLimits(4, 10)
    first = await api.call("POST", "/v1/sagas/shop/executions", json={"input": ORDER},
                           headers={"Idempotency-Key": "k-1"})
    again = await api.call("POST", "/v1/sagas/shop/executions", json={"input": ORDER},
                           headers={"Idempotency-Key": "k-1"})
    assert (first.status, again.status) == (202, 200) and gate.total == 3


# -- flags and variables --------------------------------------------------------


def test_flags_beat_variables_which_beat_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SAGARAY_MAX_IN_FLIGHT", "SAGARAY_MAX_IN_FLIGHT_PER_HOST"):
        monkeypatch.delenv(name, raising=False)

    def options(*argv: str) -> tuple[int, int]:
        found = serve_options(build_parser().parse_args(["serve", *argv]))
        return found.max_in_flight, found.max_in_flight_per_host

    assert options() == (20_000, 10_000)
    monkeypatch.setenv("SAGARAY_MAX_IN_FLIGHT", "50")
    monkeypatch.setenv("SAGARAY_MAX_IN_FLIGHT_PER_HOST", "7")
    assert options() == (50, 7)
    assert options("--max-in-flight", "9", "--max-in-flight-per-host", "3") == (9, 3)


@pytest.mark.parametrize("value", ["0", "many", "-3"])
def test_a_bad_limit_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SAGARAY_MAX_IN_FLIGHT", value)
    assert main(["serve"]) == 2
    monkeypatch.delenv("SAGARAY_MAX_IN_FLIGHT")
    assert main(["serve", "--max-in-flight-per-host", value]) == 2
