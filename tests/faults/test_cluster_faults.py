"""Sagaray on a real three-node Ray cluster: placement, a node crash, serve crashes.

One cluster for the module (head + two workers, each its own ``ray start``, see
``tests/cluster.py``), one throwaway PostgreSQL journal (a fresh schema per test), and the
demo services in this process's event loop. The coordinator runs as ``sagaray serve``
subprocesses joined to the cluster (``serve_process.py``): this process may already be
connected to the session's own Ray, and a process joins one cluster only.

Each test uses its own namespace, so its SagaHosts and supervisor are its own, and removes
them at its end. ``test_worker_node_killed_mid_load`` kills the second worker for good:
the tests after it run on the head and the first worker. Run with ``-s`` for the figures.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.runner import start_services, write_services_file
from tests.cluster import ClusterNode, RayCluster
from tests.faults.serve_process import (
    ORDER_SERVICES,
    HostProbe,
    SagaClient,
    ServeProcess,
    Started,
    check_ledgers,
    launch_on_cluster,
)
from tests.order_variants import write_order_variant
from tests.pg import PgServer, drop_schema, fresh_schema, missing_reason

pytestmark = [pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SAGA = "cluster_order"
LEASE_SECONDS = 2.0
# Every execution of a test ends within this after its last disruption.
SETTLE_TIMEOUT = 120.0


# -- module fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    """Head and two workers, 2 CPUs each (the hosts take none unless a test asks; SPREAD
    spreads them, best effort)."""
    started = time.monotonic()
    made: RayCluster | None = None
    failure: str | None = None
    try:
        made = RayCluster()
        made.start_head(cpus=2)
        made.add_worker(cpus=2, resources={"worker_1": 1})
        made.add_worker(cpus=2, resources={"worker_2": 1})
    except Exception as exc:
        if made is not None:
            made.stop()
        where = "in CI (CI=true)" if IN_CI else "on this machine"
        failure = f"could not start a three-node Ray cluster {where}:\n{exc}"
    if failure is not None or made is None:
        pytest.fail(failure or "no cluster", pytrace=False)
    print(f"\nthree-node cluster up in {time.monotonic() - started:.1f} s")
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """The journal's PostgreSQL; missing binaries fail the test, here and in CI alike."""
    problem = missing_reason()
    if problem is not None:
        pytest.fail(f"the cluster fault tests need PostgreSQL: {problem}", pytrace=False)
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Saga definitions and logs. ``cluster_order`` is ``faulty_order`` with a 5 s timeout
    and 10 attempts per step: a step slowed down on purpose stays in flight, and a loaded
    2-core machine does not turn into timeouts (whose outcome is unknown) what a test
    expects to succeed."""
    base = tmp_path_factory.mktemp("cluster-faults")
    # An attempt in flight when its host dies is journaled as interrupted and uses up one
    # attempt: a budget of 10, so that a takeover cannot exhaust a step that should succeed.
    write_order_variant(base / "sagas", SAGA, timeout="5s", attempts=10)
    return base


@pytest.fixture(scope="module")
async def services(workdir: Path) -> AsyncIterator[dict[str, str]]:
    running = await start_services(list(ORDER_SERVICES))
    await asyncio.to_thread(write_services_file, running.urls, workdir / "services.yaml")
    yield dict(running.urls)
    await running.close()


@pytest.fixture(scope="module")
def probe(cluster: RayCluster, workdir: Path) -> Iterator[HostProbe]:
    found = HostProbe(cluster, workdir / "probe.log")
    yield found
    found.close()


@pytest.fixture
async def journal_url(pg: PgServer) -> AsyncIterator[str]:
    url = await fresh_schema(pg)
    yield url
    await drop_schema(pg, url)


@pytest.fixture
async def client(services: dict[str, str]) -> AsyncIterator[SagaClient]:
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        yield SagaClient(session, services)


class Coordinators:
    """The serve processes of one test; all are stopped and their actors removed after it."""

    def __init__(self, cluster: RayCluster, probe: HostProbe, workdir: Path,
                 journal_url: str) -> None:
        self.cluster, self.probe, self.workdir = cluster, probe, workdir
        self.journal_url = journal_url
        self.namespace = f"cf-{uuid.uuid4().hex[:6]}"
        self.launched: list[ServeProcess] = []

    def launch(self, name: str, hosts: int, extra_args: Sequence[str] = ()) -> ServeProcess:
        serve = launch_on_cluster(
            self.cluster, name=name, sagas_dir=self.workdir / "sagas",
            services_file=self.workdir / "services.yaml", journal_url=self.journal_url,
            namespace=self.namespace, log_dir=self.workdir / "logs", hosts=hosts,
            lease_seconds=LEASE_SECONDS, extra_args=extra_args)
        self.launched.append(serve)
        return serve

    async def start(self, name: str, hosts: int, extra_args: Sequence[str] = ()) -> ServeProcess:
        serve = self.launch(name, hosts, extra_args)
        took = await asyncio.to_thread(serve.wait_ready)
        print(f"serve {name} ready in {took:.1f} s ({serve.resumed} executions resumed)")
        return serve

    def close(self) -> None:
        for serve in self.launched:
            serve.stop()
        if self.launched:
            self.probe.remove_pool(self.launched[0])


@pytest.fixture
async def coordinators(cluster: RayCluster, probe: HostProbe, workdir: Path, journal_url: str,
                       services: dict[str, str]) -> AsyncIterator[Coordinators]:
    made = Coordinators(cluster, probe, workdir, journal_url)
    try:
        yield made
    finally:
        await asyncio.to_thread(made.close)


# -- helpers --------------------------------------------------------------------------------


def order(**extra: Any) -> dict[str, Any]:
    return {"order_id": f"ORD-{uuid.uuid4().hex[:10]}", **extra}


def expected_status(value: dict[str, Any]) -> str:
    faults = value.get("faults") or {}
    return "compensated" if "business" in faults.values() else "completed"


def mixed_orders(count: int, slow: str | None = None) -> list[dict[str, Any]]:
    """Every fourth compensates (its pivot refuses), every fifth meets one 503 first;
    ``slow`` adds latency to every order (e.g. ``{"charge_payment": "latency=1500"}``)."""
    values = []
    for index in range(count):
        faults: dict[str, str] = {}
        if index % 4 == 3:
            faults["confirm_order"] = "business"
        elif index % 5 == 0:
            faults["reserve_inventory"] = "error-once"
        if slow is not None:
            step, fault = slow.split(":", 1)
            faults[step] = ",".join(f for f in (faults.get(step), fault) if f)
        values.append(order(faults=faults))
    return values


def node_names(cluster: RayCluster) -> dict[str, str]:
    return {node.node_id or "?": node.name for node in cluster.nodes}


async def settle(client: SagaClient, url: str, started: list[Started],
                 timeout: float = SETTLE_TIMEOUT) -> tuple[dict[str, str], float]:
    return await client.wait_terminal(url, [s.execution_id for s in started], timeout)


async def assert_consistent(client: SagaClient, started: list[Started],
                            statuses: dict[str, str]) -> None:
    """Expected final statuses, and ledgers with no duplicate and nothing half undone."""
    wrong = [(s.execution_id, s.input.get("faults"), statuses[s.execution_id])
             for s in started if statuses[s.execution_id] != expected_status(s.input)]
    assert not wrong, f"{len(wrong)} executions ended otherwise than expected: {wrong[:5]}"
    report = check_ledgers(statuses, await client.ledgers())
    print(f"ledgers: {report.summary()}")
    assert report.ok, (report.duplicates[:10], report.inconsistent[:10])


async def journal_counts(journal_url: str) -> dict[str, int]:
    """Executions per status, straight from the journal (the API may be dead), and how many
    unfinished ones no host has claimed yet (``unclaimed``)."""
    base, schema = journal_url.rsplit("?search_path=", 1)
    connection = await asyncpg.connect(base)
    try:
        rows = await connection.fetch(
            f'SELECT status, owner IS NULL AS unclaimed, count(*) AS n FROM "{schema}".executions'
            " GROUP BY 1, 2")
    finally:
        await connection.close()
    counts: Counter[str] = Counter()
    for row in rows:
        counts[row["status"]] += row["n"]
        if row["unclaimed"] and row["status"] in ("running", "compensating"):
            counts["unclaimed"] += row["n"]
    return dict(counts)


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_hosts_and_executions_spread_over_nodes(
    cluster: RayCluster, coordinators: Coordinators, client: SagaClient, probe: HostProbe
) -> None:
    serve = await coordinators.start("spread", hosts=4)
    names = node_names(cluster)
    hosts = await asyncio.to_thread(probe.host_stats, serve.namespace, serve.host_names)
    host_nodes = {name: names.get((stats or {}).get("node_id") or "?", "?")
                  for name, stats in hosts.items()}
    print(f"hosts: {host_nodes}")

    started = await client.burst(serve.url, SAGA, mixed_orders(50))
    statuses, _ = await settle(client, serve.url, started)
    views = await client.views(serve.url, statuses)
    per_node = Counter(names.get(v["placement"]["node_id"], "?") for v in views.values())
    per_host = Counter(v["placement"]["host"] for v in views.values())
    print(f"50 executions per node: {dict(per_node)}; per host: {dict(sorted(per_host.items()))}")
    print(f"final statuses: {dict(Counter(statuses.values()))}")
    assert "?" not in per_node, per_node
    assert len(set(host_nodes.values())) >= 2, f"all hosts on one node: {host_nodes}"
    assert len(per_node) >= 2, f"executions ran on one node only: {per_node}"
    await assert_consistent(client, started, statuses)
    # Once each host has answered a hand-over over Ray, the serve process reaches it over
    # its link on that host's node.
    more = [await client.start(serve.url, SAGA, order) for order in mixed_orders(12)]
    await settle(client, serve.url, more)
    calls = await client.host_calls(serve.url)
    print(f"hand-overs and feed polls by way: {calls}")
    assert calls.get(("start_many", "link"), 0) > 0, calls


@pytest.mark.timeout(240)
async def test_worker_node_killed_mid_load(
    cluster: RayCluster, coordinators: Coordinators, client: SagaClient, probe: HostProbe
) -> None:
    # SPREAD alone is best effort: with hosts that take no CPU it once put all four on the
    # head. A whole CPU each fits at most two on any 2-CPU node, so a worker holds one, and
    # the survivors (head and one worker, 4 CPUs) still fit all four after the kill.
    serve = await coordinators.start("node-kill", hosts=4, extra_args=("--host-cpus", "1"))
    names = node_names(cluster)
    hosts = await asyncio.to_thread(probe.host_stats, serve.namespace, serve.host_names)
    on_node: dict[str, list[str]] = {}
    for name, stats in hosts.items():
        assert stats is not None, f"{name} did not answer"
        on_node.setdefault(stats["node_id"], []).append(name)
    print(f"hosts per node: { {names[n]: h for n, h in on_node.items()} }")
    # The worker with the most hosts dies (ties: the second worker, so the first one stays).
    victim: ClusterNode = max(reversed(cluster.workers),
                              key=lambda node: len(on_node.get(node.node_id or "", [])))
    doomed_hosts = on_node.get(victim.node_id or "", [])
    assert doomed_hosts, f"no host on any worker node: {on_node}"

    # Every order spends 1.5 s in charge_payment, so all are in flight at the kill.
    started = await client.burst(serve.url, SAGA, mixed_orders(100, "charge_payment:latency=1500"))
    await asyncio.sleep(0.5)
    before = await journal_counts(coordinators.journal_url)
    killed_at = await asyncio.to_thread(cluster.kill_node, victim)
    print(f"killed {victim.name} ({len(doomed_hosts)} hosts: {doomed_hosts}); journal at the "
          f"kill: {before}")

    statuses, done_at = await settle(client, serve.url, started)
    print(f"all 100 terminal {done_at - killed_at:.2f} s after the node kill: "
          f"{dict(Counter(statuses.values()))}")
    views = await client.views(serve.url, statuses)
    moved = [v for v in views.values() if v["placement"]["node_id"] != victim.node_id]
    assert len(moved) == len(views), "an execution ended on the dead node"
    histories = await asyncio.gather(*(client.history(serve.url, s.execution_id)
                                       for s in started))
    first_nodes = Counter(
        names.get(next(e["node_id"] for e in history if e["type"] == "host_assigned"), "?")
        for history in histories)
    print(f"first placement per node: {dict(first_nodes)}; final: "
          f"{dict(Counter(names.get(v['placement']['node_id'], '?') for v in views.values()))}")
    assert first_nodes[victim.name] > 0, "no execution had started on the killed node"
    after = await asyncio.to_thread(probe.host_stats, serve.namespace, serve.host_names)
    where = {host: names.get((s or {}).get("node_id") or "?") for host, s in after.items()}
    print(f"hosts after: {where}")
    await assert_consistent(client, started, statuses)


@pytest.mark.timeout(240)
async def test_serve_killed_right_after_202_burst(
    cluster: RayCluster, coordinators: Coordinators, client: SagaClient
) -> None:
    first = await coordinators.start("burst", hosts=4)
    began = time.monotonic()
    started = await client.burst(first.url, SAGA, mixed_orders(500))
    accepted_in = time.monotonic() - began
    killed_at = await asyncio.to_thread(first.kill)
    at_kill = await journal_counts(coordinators.journal_url)
    done = sum(n for status, n in at_kill.items() if status in ("completed", "compensated"))
    print(f"500 starts answered 202 in {accepted_in:.2f} s; serve SIGKILLed; journal at the "
          f"kill: {at_kill} ({done} already done, {at_kill.get('unclaimed', 0)} not yet "
          f"claimed by a host)")
    assert sum(n for status, n in at_kill.items() if status != "unclaimed") == 500

    second = await coordinators.start("burst-again", hosts=4)
    statuses, done_at = await settle(client, second.url, started)
    assert second.ready_at is not None
    print(f"all 500 terminal {done_at - killed_at:.2f} s after the kill, "
          f"{done_at - second.ready_at:.2f} s after the new serve was ready: "
          f"{dict(Counter(statuses.values()))}")
    await assert_consistent(client, started, statuses)


@pytest.mark.timeout(240)
async def test_two_serve_processes_share_journal_and_cluster(
    cluster: RayCluster, coordinators: Coordinators, client: SagaClient, probe: HostProbe
) -> None:
    """Two serve processes in one namespace: one pool of hosts and one supervisor (attached
    to with get_if_exists), one journal. Separate namespaces would give each its own pool
    and supervisor, both sweeping the same journal; sharing is what the pool is made for."""
    one, two = await asyncio.gather(coordinators.start("one", hosts=4),
                                    coordinators.start("two", hosts=4))
    stats = await asyncio.to_thread(probe.host_stats, one.namespace, one.host_names)
    assert all(s is not None for s in stats.values()), stats
    print(f"shared hosts (pid per host): { {h: (s or {}).get('pid') for h, s in stats.items()} }")

    slow = "create_shipment:latency=300"
    early_one = await client.burst(one.url, SAGA, mixed_orders(20, slow))
    early_two = await client.burst(two.url, SAGA, mixed_orders(20, slow))
    # Each API reads what was started through the other.
    assert (await client.view(two.url, early_one[0].execution_id))["saga"] == SAGA
    assert (await client.view(one.url, early_two[0].execution_id))["saga"] == SAGA

    # Both take starts; "one" dies in the middle of its share (once 40 of 130 went
    # through), whose remaining starts fail over to "two" with the same idempotency keys.
    gate = asyncio.Semaphore(4)

    async def through_one(value: dict[str, Any]) -> Started:
        async with gate:
            return await client.start([one.url, two.url], SAGA, value)

    second_round = [asyncio.ensure_future(through_one(v)) for v in mixed_orders(130, slow)]
    through_two = asyncio.ensure_future(
        client.burst(two.url, SAGA, mixed_orders(130, slow), concurrency=4))
    while sum(task.done() for task in second_round) < 40:
        await asyncio.sleep(0.01)
    killed_at = await asyncio.to_thread(one.kill)
    started = [*early_one, *early_two, *await asyncio.gather(*second_round), *await through_two]
    by_api = Counter("one" if s.api == one.url else "two" for s in started)
    print(f"serve one SIGKILLed mid-load; starts accepted per API: {dict(by_api)}")
    assert len({s.execution_id for s in started}) == 300
    failed_over = sum(1 for s in started[40:170] if s.api == two.url)
    print(f"{failed_over} of the 130 starts aimed at one went to two")
    assert by_api["one"] >= 60, "the kill came before 40 starts of the second round"
    assert failed_over > 0, "nothing failed over"

    statuses, done_at = await settle(client, two.url, started)
    print(f"all 300 terminal {done_at - killed_at:.2f} s after the kill: "
          f"{dict(Counter(statuses.values()))}")
    from_one = [s.execution_id for s in started if s.api == one.url]
    views = await client.views(two.url, from_one)
    assert all(v["status"] == statuses[i] for i, v in views.items())
    await assert_consistent(client, started, statuses)
