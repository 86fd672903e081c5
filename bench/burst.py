"""A burst of starts ten times the in-flight limit against a live coordinator.

    python -m bench.burst [--limit 1000] [--per-host 600] [--factor 10] [--rounds 2]

Starts the bench services and a coordinator (``bench.procs``, 2 SagaHosts, SQLite) with
``--max-in-flight LIMIT --max-in-flight-per-host PER_HOST``, holds every execution at its
second step (the services' gate on ``/charges``) so admitted executions stay in flight,
then sends ``factor x limit`` starts at once, ``--concurrency`` connections at a time.
It prints, per round: the 202 and 429 counts (and anything else), whether every 429 had
``Retry-After``, the RSS of the API process and of each SagaHost before the burst, while
the admitted executions are parked, and after they all finished; then the journal rows
against the 202s (a 429 must leave none). Last, the cost of admission: ``reserve`` +
``release`` per start, measured in this process, and one refresh of the counts
(``Journal.live_counts``) on the run's journal while the admitted executions are parked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp

from bench.harness import WORK, Child, services_yaml
from bench.proc_stats import coordinator_memory
from coordinator.admission import Admission, AdmissionLimits
from coordinator.journal.sqlite import SQLiteJournal
from coordinator.pool_hashing import rendezvous

SAGA = "bench_three_step"
GATE = "/charges"


def rss_mb(api_pid: int) -> dict[str, float]:
    return {name.split(":")[0] + ":" + name.split(":")[1]: round(v.get("VmRSS", 0) / 1024, 1)
            for name, v in coordinator_memory(api_pid).items()}


async def burst(http: aiohttp.ClientSession, api: str, count: int,
                concurrency: int) -> tuple[Counter[int], list[str], int, float]:
    """``count`` starts, ``concurrency`` in flight at once: statuses, accepted ids,
    429s lacking Retry-After, seconds taken."""
    statuses: Counter[int] = Counter()
    accepted: list[str] = []
    missing_retry_after = 0
    todo = iter(range(count))

    async def worker() -> None:
        nonlocal missing_retry_after
        for _ in todo:
            body = {"input": {"order_id": f"b-{uuid.uuid4().hex[:10]}"}}
            async with http.post(f"{api}/v1/sagas/{SAGA}/executions", json=body) as response:
                statuses[response.status] += 1
                payload = await response.json()
                if response.status == 202:
                    accepted.append(payload["execution_id"])
                elif response.status == 429 and "Retry-After" not in response.headers:
                    missing_retry_after += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, accepted, missing_retry_after, time.perf_counter() - began


async def wait_all(http: aiohttp.ClientSession, api: str, ids: list[str]) -> Counter[str]:
    outcome: Counter[str] = Counter()
    todo = iter(ids)

    async def worker() -> None:
        for execution_id in todo:
            while True:
                async with http.get(f"{api}/v1/executions/{execution_id}?wait=30") as response:
                    view = await response.json()
                if view["status"] in ("completed", "compensated", "failed"):
                    outcome[view["status"]] += 1
                    break

    await asyncio.gather(*(worker() for _ in range(50)))
    return outcome


def admission_cost(starts: int = 200_000) -> dict[str, float]:
    """Microseconds per start of reserve + release, two hosts, limits never reached."""
    hosts = ["h-0", "h-1"]

    async def no_counts() -> dict[str | None, int]:
        return {}

    gate = Admission(AdmissionLimits(10**9, 10**9), lambda: hosts,
                     lambda key: hosts[rendezvous(key, hosts)], no_counts)
    began = time.perf_counter()
    for _ in range(starts):
        gate.release(gate.reserve(shared=True))
    per_start = (time.perf_counter() - began) / starts
    began = time.perf_counter()
    for _ in range(starts):
        _ = uuid.uuid4().hex  # what a start without admission spends on its id
    baseline = (time.perf_counter() - began) / starts
    return {"reserve_release_us": round(per_start * 1e6, 2),
            "uuid4_only_us": round(baseline * 1e6, 2)}


async def refresh_cost(journal_path: str, times: int = 20) -> dict[str, Any]:
    journal = SQLiteJournal(journal_path)
    await journal.open()
    try:
        counts = await journal.live_counts()
        began = time.perf_counter()
        for _ in range(times):
            await journal.live_counts()
        return {"live_rows": sum(counts.values()),
                "live_counts_ms": round((time.perf_counter() - began) / times * 1000, 2)}
    finally:
        await journal.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = WORK / f"burst-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    services = Child("burst-services", ["services"])
    info = await services.start()
    services_file = run_dir / "services.yaml"
    services_file.write_text(services_yaml(info["urls"]))
    journal_path = run_dir / "journal.db"
    coordinator = Child("burst-coordinator", [
        "coordinator", "--journal", f"sqlite:///{journal_path}", "--services",
        str(services_file), "--hosts", "2", "--max-in-flight", str(args.limit),
        "--max-in-flight-per-host", str(args.per_host)])
    result: dict[str, Any] = {"limit": args.limit, "per_host": args.per_host,
                              "burst": args.factor * args.limit, "rounds": []}
    try:
        api_info = await coordinator.start()
        api, api_pid = api_info["url"], int(api_info["api_pid"])
        timeout = aiohttp.ClientTimeout(total=300)
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            for number in range(1, args.rounds + 1):
                result["rounds"].append(await one_round(
                    http, api, api_pid, info["control"], args, number, str(journal_path)))
            result["journal_rows"] = len(await all_rows(str(journal_path)))
            result["accepted_total"] = sum(r["accepted"] for r in result["rounds"])
    finally:
        await coordinator.stop()
        await services.stop()
    result["admission"] = admission_cost()
    return result


async def one_round(http: aiohttp.ClientSession, api: str, api_pid: int, control: str,
                    args: argparse.Namespace, number: int, journal_path: str
                    ) -> dict[str, Any]:
    async with http.post(f"{control}/_bench/gate", json={"closed": True, "path": GATE}):
        pass
    before = rss_mb(api_pid)
    statuses, accepted, missing, seconds = await burst(
        http, api, args.factor * args.limit, args.concurrency)
    parked = rss_mb(api_pid)
    refresh = await refresh_cost(journal_path)  # while the admitted ones are in flight
    async with http.post(f"{control}/_bench/gate", json={"closed": False}):
        pass
    outcome = await wait_all(http, api, accepted)
    await asyncio.sleep(2)  # let the API's counts refresh from the journal
    after = rss_mb(api_pid)
    row = {"round": number, "statuses": dict(statuses), "accepted": len(accepted),
           "429_without_retry_after": missing, "burst_seconds": round(seconds, 2),
           "outcomes": dict(outcome), "refresh_while_parked": refresh,
           "rss_mb_before": before, "rss_mb_parked": parked,
           "rss_mb_after": after}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


async def all_rows(journal_path: str) -> list[str]:
    journal = SQLiteJournal(journal_path)
    await journal.open()
    try:
        ids: list[str] = []
        cursor = None
        while True:
            page = await journal.list_executions(limit=500, cursor=cursor)
            ids += [row.execution_id for row in page.items]
            if page.next_cursor is None:
                return ids
            cursor = page.next_cursor
    finally:
        await journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=1000, help="--max-in-flight")
    parser.add_argument("--per-host", type=int, default=600, help="--max-in-flight-per-host")
    parser.add_argument("--factor", type=int, default=10, help="burst = factor x limit")
    parser.add_argument("--concurrency", type=int, default=200,
                        help="connections sending starts at once")
    parser.add_argument("--rounds", type=int, default=2)
    result = asyncio.run(run(parser.parse_args()))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
