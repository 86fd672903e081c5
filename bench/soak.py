"""Soak: mixed ``faulty_order`` load against a local stack while faults are injected.

    .venv/bin/python -m bench.soak --minutes 5         # or: make soak MINUTES=5

The stack: a throwaway PostgreSQL journal (``tests/pg.py``), a one-node Ray of its own
(``tests/cluster.py``: a ``ray start`` head with its own ports and token, so no other Ray on
the machine is touched), the demo services in this process, and ``sagaray serve`` as a
subprocess (``tests/faults/serve_process.py``). For ``--minutes`` it starts ``--rate``
sagas a second, each with random injected faults (a business refusal at some step, which
compensates; a 503 once; latency; a compensation that fails once), and one fault at a time,
in shuffled rounds:

- ``host_kill``: SIGKILL of a SagaHost process that runs executions (Ray restarts it);
- ``host_stop``: SIGSTOP of such a host for ``--stop-seconds``, then SIGCONT (its leases
  expire and other hosts take over; its late writes are fenced out);
- ``pg_restart``: a fast restart of the journal's PostgreSQL.

A fault's recovery time runs from the fault until every execution it hit is terminal: for a
host, those it owned at that moment; for PostgreSQL, every execution then unfinished. After
the load stops, every started execution must be terminal within ``--settle`` seconds (else
it is ``lost``), and the services' ledgers must hold no effect twice for one idempotency key
and no compensated execution with an effect left in place. The exit status is 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from services.runner import start_services, write_services_file
from tests.cluster import RayCluster
from tests.faults.serve_process import (
    ORDER_SERVICES,
    TERMINAL,
    HostProbe,
    SagaClient,
    ServeProcess,
    Started,
    check_ledgers,
    launch_on_cluster,
)
from tests.pg import PgServer, missing_reason

ROOT = Path(__file__).resolve().parents[1]
SAGA = "faulty_order"
STEPS = ("reserve_inventory", "charge_payment", "create_shipment", "confirm_order")
UNDOABLE = ("reserve_inventory", "charge_payment", "create_shipment")
FAULT_KINDS = ("host_kill", "host_stop", "pg_restart")
RECOVERY_TIMEOUT = 90.0


def random_order(rng: random.Random) -> dict[str, Any]:
    faults: dict[str, str] = {}
    undo: dict[str, str] = {}
    # Every order spends some time in flight, so that a fault finds executions to hit.
    slow = rng.choice((*STEPS, "notify"))
    faults[slow] = f"latency={rng.randint(30, 150)}"
    draw = rng.random()
    step = rng.choice(STEPS)
    if draw < 0.25:
        add(faults, step, "business")
        done_before = [s for s in UNDOABLE if STEPS.index(s) < STEPS.index(step)]
        if done_before and rng.random() < 0.5:
            undo[rng.choice(done_before)] = "error-once"
    elif draw < 0.45:
        add(faults, step, "error-once")
    elif draw < 0.5:
        add(faults, "notify", "error-once")
    return {"order_id": f"SOAK-{uuid.uuid4().hex[:10]}", "amount": rng.randint(1, 500),
            "faults": faults, "undo_faults": undo}


def add(faults: dict[str, str], step: str, fault: str) -> None:
    faults[step] = ",".join(f for f in (faults.get(step), fault) if f)


def expected_status(value: dict[str, Any]) -> str:
    refused = any("business" in spec.split(",") for spec in value["faults"].values())
    return "compensated" if refused else "completed"


@dataclass
class Fault:
    kind: str
    target: str
    at: float  # seconds since the load began
    affected: set[str]
    injected: float  # wall clock
    recovered_s: float | None = None
    host_back_s: float | None = None
    note: str = ""


@dataclass
class Load:
    started: list[Started] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class JournalReader:
    """Reads the executions table straight from PostgreSQL; None while it is down."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: Any = None
        self._lock = asyncio.Lock()

    async def _fetch(self, sql: str) -> list[Any] | None:
        # One connection, one query at a time (the progress and the fault tasks share it).
        async with self._lock:
            try:
                if self._connection is None or self._connection.is_closed():
                    self._connection = await asyncpg.connect(self.url, timeout=2)
                rows: list[Any] = await self._connection.fetch(sql, timeout=5)
                return rows
            except Exception:  # down, restarting, or a connection it just dropped
                if self._connection is not None:
                    with contextlib.suppress(Exception):
                        self._connection.terminate()
                self._connection = None
                return None

    async def unfinished(self) -> dict[str, str | None] | None:
        """Non-terminal executions and their owners."""
        rows = await self._fetch("SELECT execution_id, owner FROM executions WHERE status NOT IN"
                                 " ('completed', 'compensated', 'failed')")
        return None if rows is None else {row["execution_id"]: row["owner"] for row in rows}

    async def sessions(self) -> str:
        """Journal sessions by state, and how many wait for a lock (diagnostics)."""
        rows = await self._fetch(
            "SELECT state, coalesce(wait_event_type = 'Lock', false) AS blocked, count(*) AS n FROM"
            " pg_stat_activity WHERE application_name = 'sagaray-journal'"
            " GROUP BY 1, 2 ORDER BY 1, 2")
        if rows is None:
            return "?"
        return ", ".join(f"{row['state']}{' (lock wait)' if row['blocked'] else ''}: {row['n']}"
                         for row in rows)

    async def statuses(self) -> dict[str, str] | None:
        rows = await self._fetch("SELECT execution_id, status FROM executions")
        return None if rows is None else {row["execution_id"]: row["status"] for row in rows}

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = Path(tempfile.mkdtemp(prefix="sagaray-soak-"))
        self.faults: list[Fault] = []
        self.load = Load()
        self.stopped_pids: set[int] = set()
        self.probe: HostProbe | None = None
        self.began = 0.0

    # -- the stack --------------------------------------------------------------------

    async def run(self) -> int:
        problem = missing_reason()
        if problem is not None:
            print(f"soak needs PostgreSQL: {problem}", file=sys.stderr)
            return 2
        pg = PgServer()
        cluster = RayCluster()
        serve: ServeProcess | None = None
        probe: HostProbe | None = None
        try:
            await asyncio.to_thread(pg.start)
            await asyncio.to_thread(cluster.start_head, 2)
            running = await start_services(list(ORDER_SERVICES))
            try:
                services_file = self.workdir / "services.yaml"
                await asyncio.to_thread(write_services_file, running.urls, services_file)
                serve = launch_on_cluster(
                    cluster, name="soak", sagas_dir=ROOT / "tests" / "sagas",
                    services_file=services_file, journal_url=pg.url,
                    namespace="soak", log_dir=self.workdir, hosts=self.args.hosts,
                    lease_seconds=self.args.lease_seconds)
                await asyncio.to_thread(serve.wait_ready)
                probe = await asyncio.to_thread(HostProbe, cluster, self.workdir / "probe.log")
                self.probe = probe
                return await self._soak(pg, cluster, serve, probe, running.urls)
            finally:
                await running.close()
        finally:
            for pid in self.stopped_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            if probe is not None:
                await asyncio.to_thread(probe.close)
            if serve is not None:
                await asyncio.to_thread(serve.stop)
            if self.args.keep and cluster.head is not None:
                session = cluster.head.session_dir()
                if session is not None:
                    await asyncio.to_thread(shutil.copytree, session / "logs",
                                            self.workdir / "ray-logs", dirs_exist_ok=True)
            await asyncio.to_thread(cluster.stop)
            await asyncio.to_thread(pg.cleanup)
            if self.args.keep:
                print(f"logs kept in {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    async def _soak(self, pg: PgServer, cluster: RayCluster, serve: ServeProcess,
                    probe: HostProbe, services: dict[str, str]) -> int:
        args = self.args
        reader = JournalReader(pg.url)
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=128)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            client = SagaClient(session, services)
            print(f"soak: {args.minutes:g} min of {SAGA} at {args.rate:g}/s against "
                  f"{args.hosts} hosts (lease {args.lease_seconds:g} s), a fault every "
                  f"~{args.fault_interval:g} s", flush=True)
            self.began = time.monotonic()
            duration = args.minutes * 60
            load = asyncio.create_task(self._generate(client, serve.url, duration))
            faults = asyncio.create_task(
                self._inject(pg, cluster, serve, probe, reader, self.began + duration))
            progress = asyncio.create_task(self._progress(reader))
            await load
            load_stopped = time.monotonic()
            print(f"load stopped after {load_stopped - self.began:.0f} s; waiting for every "
                  f"execution to end (at most {args.settle:g} s)", flush=True)
            await faults  # the last fault may still be recovering
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            statuses, settled_s = await self._settle(reader, load_stopped, args.settle)
            ledgers = await client.ledgers()
        await reader.close()
        return self._report(statuses, settled_s, check_ledgers(statuses, ledgers))

    # -- load -------------------------------------------------------------------------

    async def _generate(self, client: SagaClient, url: str, duration: float) -> None:
        interval = 1.0 / self.args.rate
        next_at = time.monotonic()
        while time.monotonic() - self.began < duration:
            value = random_order(self.rng)
            task = asyncio.create_task(self._start(client, url, value))
            self.load.tasks.add(task)
            task.add_done_callback(self.load.tasks.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if self.load.tasks:
            await asyncio.gather(*self.load.tasks)

    async def _start(self, client: SagaClient, url: str, value: dict[str, Any]) -> None:
        try:
            self.load.started.append(await client.start(url, SAGA, value, deadline_s=60))
        except AssertionError as error:
            self.load.refused.append(str(error))

    async def _progress(self, reader: JournalReader) -> None:
        while True:
            await asyncio.sleep(self.args.progress)
            unfinished = await reader.unfinished()
            running = "?" if unfinished is None else str(len(unfinished))
            owners = "" if unfinished is None else \
                str(dict(Counter(owner or "none" for owner in unfinished.values())))
            print(f"  t={time.monotonic() - self.began:5.0f} s  started {len(self.load.started)}"
                  f"  unfinished {running} {owners}  faults {len(self.faults)}", flush=True)
            if self.args.verbose and self.probe is not None:
                supervisor = await asyncio.to_thread(
                    self.probe.host_stats, "soak", ["soak-supervisor"], 1.0)
                print(f"           journal sessions: {await reader.sessions()}; supervisor: "
                      f"{supervisor['soak-supervisor']}", flush=True)

    # -- faults -----------------------------------------------------------------------

    async def _inject(self, pg: PgServer, cluster: RayCluster, serve: ServeProcess,
                      probe: HostProbe, reader: JournalReader, until: float) -> None:
        kinds: list[str] = []
        await asyncio.sleep(min(self.args.fault_interval / 2, 5.0))
        while time.monotonic() < until:
            if not kinds:
                kinds = list(self.args.faults)
                self.rng.shuffle(kinds)
            fault = await self._one_fault(kinds.pop(), pg, cluster, serve, probe, reader)
            if fault is not None:
                self.faults.append(fault)
                print(f"  fault {len(self.faults)}: {describe(fault)}", flush=True)
            pause = self.args.fault_interval * self.rng.uniform(0.7, 1.3)
            await asyncio.sleep(max(0.0, min(pause, until - time.monotonic())))

    async def _one_fault(self, kind: str, pg: PgServer, cluster: RayCluster,
                         serve: ServeProcess, probe: HostProbe,
                         reader: JournalReader) -> Fault | None:
        unfinished = await reader.unfinished()
        if unfinished is None:
            return None
        if kind == "pg_restart":
            fault = Fault(kind, "postgresql", time.monotonic() - self.began, set(unfinished),
                          time.time())
            await asyncio.to_thread(pg.restart, "fast")
            fault.note = f"down {time.time() - fault.injected:.1f} s"
            await self._await_recovery(fault, reader)
            return fault
        stats = await asyncio.to_thread(probe.host_stats, serve.namespace, serve.host_names)
        owned = Counter(owner for owner in unfinished.values() if owner is not None)
        # The answering host that owns the most unfinished executions (ties: at random).
        candidates = [name for name, s in stats.items() if s is not None]
        if not candidates:
            return None
        self.rng.shuffle(candidates)
        name = max(candidates, key=lambda host: owned[host])
        host = stats[name]
        assert host is not None
        pid = int(host["pid"])
        assert cluster.head is not None
        if pid not in cluster.head.refresh_pids():
            raise RuntimeError(f"host {name} pid {pid} is not a process of the soak's Ray")
        # Read again: asking the hosts may have taken seconds (one may be restarting).
        unfinished = await reader.unfinished()
        if unfinished is None:
            return None
        hit = {eid for eid, owner in unfinished.items() if owner == name}
        fault = Fault(kind, name, time.monotonic() - self.began, hit, time.time())
        if kind == "host_kill":
            os.kill(pid, signal.SIGKILL)
            back = asyncio.create_task(self._host_back(fault, probe, serve, name, pid))
            await self._await_recovery(fault, reader)
            await back
        else:
            os.kill(pid, signal.SIGSTOP)
            self.stopped_pids.add(pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._await_recovery(fault, reader),
                                       self.args.stop_seconds)
            await asyncio.sleep(max(0.0, fault.injected + self.args.stop_seconds - time.time()))
            os.kill(pid, signal.SIGCONT)
            self.stopped_pids.discard(pid)
            fault.note = f"SIGCONT after {time.time() - fault.injected:.1f} s"
            if fault.recovered_s is None:
                await self._await_recovery(fault, reader)
        return fault

    async def _await_recovery(self, fault: Fault, reader: JournalReader) -> None:
        deadline = fault.injected + RECOVERY_TIMEOUT
        while time.time() < deadline:
            unfinished = await reader.unfinished()
            if unfinished is not None and not fault.affected & unfinished.keys():
                fault.recovered_s = time.time() - fault.injected
                return
            await asyncio.sleep(0.1)

    async def _host_back(self, fault: Fault, probe: HostProbe, serve: ServeProcess,
                         name: str, old_pid: int) -> None:
        while time.time() < fault.injected + RECOVERY_TIMEOUT:
            stats = await asyncio.to_thread(probe.host_stats, serve.namespace, [name], 1.0)
            now = stats.get(name)
            if now is not None and now["pid"] != old_pid:
                fault.host_back_s = time.time() - fault.injected
                return
            await asyncio.sleep(0.1)

    # -- the end ----------------------------------------------------------------------

    async def _settle(self, reader: JournalReader, began: float,
                      bound: float) -> tuple[dict[str, str], float]:
        """Statuses once every started execution is terminal (or ``bound`` seconds after
        ``began`` passed), and how long after ``began`` that was."""
        ids = {s.execution_id for s in self.load.started}
        statuses: dict[str, str] = {}
        while True:
            found = await reader.statuses()
            if found is not None:
                statuses = {i: found.get(i, "missing") for i in ids}
                if all(status in TERMINAL for status in statuses.values()):
                    break
            if time.monotonic() - began > bound:
                break
            await asyncio.sleep(0.5)
        return statuses, time.monotonic() - began

    def _report(self, statuses: dict[str, str], settled_s: float, ledgers: Any) -> int:
        counts = Counter(statuses.values())
        lost = sorted(i for i, status in statuses.items() if status not in TERMINAL)
        expected = {s.execution_id: expected_status(s.input) for s in self.load.started}
        unexpected = Counter(f"{expected[i]}->{status}" for i, status in statuses.items()
                             if status in TERMINAL and status != expected[i])
        unrecovered = [f for f in self.faults if f.recovered_s is None]
        print()
        print("=== soak result ===")
        print(f"started            {len(self.load.started)}")
        print(f"completed          {counts['completed']}")
        print(f"compensated        {counts['compensated']}")
        print(f"failed             {counts['failed']}")
        print(f"lost               {len(lost)}  (not terminal {settled_s:.1f} s after the "
              f"load stopped; bound {self.args.settle:g} s)")
        print(f"duplicate effects  {len(ledgers.duplicates)}")
        print(f"half-undone        {len(ledgers.inconsistent)}  (compensated with an effect "
              f"left, or completed and undone)")
        print(f"starts refused     {len(self.load.refused)}")
        print(f"unexpected status  {sum(unexpected.values())} {dict(unexpected)}  (informational:"
              f" a 400 ms timeout leaves an effect unknown, and create_shipment does not retry"
              f" it)")
        print(f"ledgers            {ledgers.summary()}")
        print(f"faults             {len(self.faults)}: "
              f"{dict(Counter(f.kind for f in self.faults))}")
        print(f"  {'#':>2} {'at s':>6}  {'kind':<10} {'target':<16} {'hit':>4} "
              f"{'recovered s':>11} {'host back s':>11}  note")
        for number, fault in enumerate(self.faults, 1):
            print(f"  {number:>2} {fault.at:6.1f}  {fault.kind:<10} {fault.target:<16} "
                  f"{len(fault.affected):>4} {fmt(fault.recovered_s):>11} "
                  f"{fmt(fault.host_back_s):>11}  {fault.note}")
        for sample in lost[:5]:
            print(f"lost: {sample} ({statuses[sample]})")
        for sample in [*ledgers.duplicates[:5], *ledgers.inconsistent[:5]]:
            print(f"ledger: {sample}")
        for sample in self.load.refused[:3]:
            print(f"refused start: {sample}")
        failed = bool(lost or ledgers.duplicates or ledgers.inconsistent or unrecovered
                      or self.load.refused or not self.load.started)
        print("SOAK FAILED" if failed else "SOAK OK")
        return 1 if failed else 0


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def describe(fault: Fault) -> str:
    recovered = "NOT recovered" if fault.recovered_s is None else \
        f"recovered in {fault.recovered_s:.2f} s"
    back = "" if fault.host_back_s is None else f", host back in {fault.host_back_s:.2f} s"
    note = f", {fault.note}" if fault.note else ""
    return (f"{fault.kind} {fault.target} at t={fault.at:.0f} s, {len(fault.affected)} "
            f"executions hit, {recovered}{back}{note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=5.0, help="load duration (default 5)")
    parser.add_argument("--rate", type=float, default=20.0, help="sagas started per second")
    parser.add_argument("--hosts", type=int, default=4, help="SagaHost actors (default 4)")
    parser.add_argument("--lease-seconds", type=float, default=2.0)
    parser.add_argument("--fault-interval", type=float, default=8.0,
                        help="seconds between one fault's recovery and the next fault")
    parser.add_argument("--stop-seconds", type=float, default=5.0,
                        help="how long a SIGSTOPped host stays stopped")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="bound for every execution to end after the load stops")
    parser.add_argument("--faults", default=",".join(FAULT_KINDS),
                        type=lambda text: [k for k in text.split(",") if k],
                        help=f"fault kinds to inject, comma-separated (default: all of "
                             f"{','.join(FAULT_KINDS)})")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--progress", type=float, default=10.0,
                        help="seconds between progress lines")
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    parser.add_argument("--verbose", action="store_true",
                        help="progress lines also show the journal's sessions")
    args = parser.parse_args(argv)
    unknown = set(args.faults) - set(FAULT_KINDS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    os.environ.setdefault("FLIGHTS_TOKEN", uuid.uuid4().hex)
    return asyncio.run(Soak(args).run())


if __name__ == "__main__":
    sys.exit(main())
