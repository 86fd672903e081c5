"""Sagaray benchmark suite: throughput, in-flight scale, start latency, one at a time.

    make bench                                  # the default suite (about 6 minutes)
    .venv/bin/python -m bench.suite --quick     # smaller everything (about 2 minutes)
    .venv/bin/python -m bench.suite --only A --repeat 5 -n 2000 -c 100
    .venv/bin/python -m bench.suite --profile 20  # py-spy + per-thread CPU of a load run

Processes: the demo services (inventory, payments, shipping) run in one process,
the coordinator (Ray, the SagaHosts and the HTTP API, as ``sagaray serve`` builds
them) in another, and this process only generates load and reads /proc. The
coordinator's CPU is the API process plus its Ray actor workers (SagaHosts,
Supervisor, dedicated hosts); Ray's own daemons are reported apart.

Scenarios (``--only`` takes a comma-separated subset of A, D, C, 1, T, P, B):
  A  throughput: N three-step sagas at concurrency C through ``POST ?wait=60``,
     against the same calls made directly (the floor), for the mixes ok,
     compensate (20 % refused at the last step) and retry (10 % 503 first);
     the ok mix is the headline and is repeated (--repeat, median reported)
  D  dedicated placement (a Ray actor per execution), small N
  C  start latency: POST sent -> first step call received by the service, at a
     light open-loop rate and at half the measured peak rate
  1  one saga at a time: start-to-terminal p50
  T  tracing on (OTLP/HTTP to a local receiver that discards) vs off
  P  PostgreSQL journal (a throwaway server from tests/pg.py)
  B  scale in flight: N sagas parked on a held step, memory, then time to finish

Every figure carries the 1-minute load average before and after it: the machine
is shared. Results go to stdout and to bench/results/<date>.json.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from bench import load
from bench.harness import SAGA, SAGA_DEDICATED, Bench, Child, NotMeasured, log
from bench.proc_stats import (
    machine,
)
from bench.profiling import profile
from bench.report import report
from bench.scenarios import (
    compare,
    in_flight,
    measure_sagaray,
    median_of,
    one_at_a_time,
    start_latency,
    warm_up,
)

# -- side by side: tracing off/on, SQLite/PostgreSQL, unpatched/patched ----------------


async def side_by_side(bench: Bench, scenario: str, sides: list[dict[str, Any]],
                       n: int, concurrency: int, repeat: int, n1: int) -> list[dict[str, Any]]:
    """Coordinators running at the same time, batches alternated between them (the order
    flips every round) so that each side sees the same background load; medians.

    ``sides``: dicts with ``label``, ``journal`` and optionally ``otlp`` and ``patch``.
    """
    children: list[Child] = []
    runs: list[list[dict[str, Any]]] = [[] for _ in sides]
    ones: list[list[dict[str, Any]]] = [[] for _ in sides]
    sink: list[list[int]] = [[0, 0] for _ in sides]
    try:
        for side in sides:
            await bench.start_coordinator(f"{scenario}-{side['label']}".replace(" ", "-"),
                                          side["journal"], otlp=side.get("otlp"),
                                          patch=side.get("patch", ""), tree=side.get("tree"))
            assert bench.coordinator is not None
            if side.get("otlp") and not bench.coordinator.info.get("tracing"):
                raise NotMeasured("tracing did not turn on in the coordinator")
            children.append(bench.coordinator)
            await warm_up(bench)
        for index in range(repeat):
            order = list(range(len(sides)))
            if index % 2:
                order.reverse()
            inputs = load.make_inputs("ok", n, seed=index + 1)
            for i in order:
                bench.coordinator = children[i]
                before = await bench.ctl("GET", "/_bench/stats")
                result = await measure_sagaray(bench, SAGA, inputs, concurrency)
                after = await bench.ctl("GET", "/_bench/stats")
                if sides[i].get("otlp"):
                    result["otlp_posts"] = after["otlp_posts"] - before["otlp_posts"]
                    result["otlp_bytes"] = after["otlp_bytes"] - before["otlp_bytes"]
                    sink[i][0] += result["otlp_posts"]
                    sink[i][1] += result["otlp_bytes"]
                runs[i].append(result)
                log(f"{scenario} {sides[i]['label']} round {index + 1}/{repeat}: "
                    f"{result['sagas_per_s']}/s p50 {result['p50_ms']} p99 {result['p99_ms']} ms, "
                    f"{result['coordinator_cpu_ms_per_call']} CPU ms/call {result['outcomes']}")
            if n1:
                for i in order:
                    bench.coordinator = children[i]
                    one = await measure_sagaray(bench, SAGA, load.make_inputs("ok", n1, 3), 1)
                    ones[i].append(one)
                    log(f"{scenario} {sides[i]['label']} one at a time: p50 {one['p50_ms']} ms")
    finally:
        for child in children:
            await child.stop()
        bench.coordinator = None
    entries = []
    for i, side in enumerate(sides):
        med: dict[str, Any] = {
            key: median_of(runs[i], key)
            for key in ("sagas_per_s", "p50_ms", "p95_ms", "p99_ms",
                        "coordinator_cpu_ms_per_saga", "coordinator_cpu_ms_per_call")}
        if ones[i]:
            med["one_at_a_time_p50_ms"] = median_of(ones[i], "p50_ms")
        med["load_1m"] = [min(r["load"][0] for r in runs[i]), max(r["load"][1] for r in runs[i])]
        entry: dict[str, Any] = {"scenario": scenario, "variant": side["label"], "mix": "ok",
                                 "n": n, "concurrency": concurrency, "repeat": repeat,
                                 "median": med, "runs": [{"sagaray": r} for r in runs[i]]}
        if side.get("otlp"):
            entry["otlp_received"] = {"posts": sink[i][0], "bytes": sink[i][1]}
        if side.get("patch"):
            entry["patch"] = side["patch"]
        entries.append(bench.record(entry))
    base, other = entries[0]["median"], entries[-1]["median"]
    log(f"{scenario}: {sides[-1]['label']} vs {sides[0]['label']}: throughput "
        f"{other['sagas_per_s'] / base['sagas_per_s'] - 1:+.0%}, CPU/call "
        f"{other['coordinator_cpu_ms_per_call'] / base['coordinator_cpu_ms_per_call'] - 1:+.0%}")
    return entries


# -- the suite ------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    bench = Bench(args)
    only = set(args.only.split(",")) if args.only else {"A", "D", "C", "1", "T", "P", "B"}
    os.environ.setdefault("FLIGHTS_TOKEN", uuid.uuid4().hex)
    log(f"machine {machine()}, run {bench.run_id}, work dir {bench.dir}")
    await bench.services.start()
    bench.session = load.client_session(max(args.c, 200))
    journal_path = bench.dir / "journal.db"
    pg = None
    try:
        if args.ab or args.ab_base_tree:
            tree = Path(args.ab_base_tree).resolve() if args.ab_base_tree else None
            await side_by_side(bench, "AB", [
                {"label": args.ab_base or (f"tree-{tree.name}" if tree else "base"),
                 "journal": f"sqlite:///{bench.dir / 'base.db'}", "tree": tree,
                 "patch": args.ab_base, "otlp": bench.control if args.ab_tracing else None},
                {"label": args.ab or "this-tree",
                 "journal": f"sqlite:///{bench.dir / 'patched.db'}",
                 "patch": args.ab, "otlp": bench.control if args.ab_tracing else None}],
                args.n, args.c, args.repeat, args.n1)
            only = set()
        if only & {"A", "D", "C", "1"} or args.profile:
            await bench.start_coordinator(
                "sqlite", f"sqlite:///{journal_path}",
                otlp=bench.control if args.profile and args.profile_tracing else None)
            await warm_up(bench)
            if args.profile:
                await profile(bench, args.profile)
                return 0
            if "A" in only:
                head = await compare(bench, "shared/sqlite", "ok", args.n, args.c, args.repeat)
                bench.peak_rate = head["median"]["sagas_per_s"]
                if not args.quick or args.mixes:
                    for mix in ("compensate", "retry"):
                        await compare(bench, "shared/sqlite", mix, args.n, args.c, 1)
                if args.field:
                    await compare(bench, "shared/sqlite (field: 500 @ 50)", "ok", 500, 50, 3)
            if "1" in only:
                await one_at_a_time(bench, "shared/sqlite", args.n1)
            if "C" in only:
                await start_latency(bench, "shared/sqlite", args.light_rate, args.nc, "light")
                peak = bench.peak_rate or args.assume_peak
                if peak:
                    half = peak / 2
                    await start_latency(bench, "shared/sqlite", half,
                                        int(half * args.half_seconds), "half of peak")
            if "D" in only:
                await compare(bench, "dedicated/sqlite", "ok", args.nd, args.cd, 1,
                              saga=SAGA_DEDICATED, raw=False)
            await bench.stop_coordinator()
        if "T" in only:
            try:
                await side_by_side(bench, "T", [
                    {"label": "tracing off", "journal": f"sqlite:///{bench.dir / 'untraced.db'}"},
                    {"label": "tracing on", "journal": f"sqlite:///{bench.dir / 'traced.db'}",
                     "otlp": bench.control}], args.nv, args.c, args.repeat_variants, 0)
            except NotMeasured as why:
                log(f"tracing variant not measured: {why}")
                bench.record({"scenario": "T", "variant": "tracing on", "median": {},
                              "not_measured": str(why)})
        if "P" in only:
            from tests.pg import PgServer, missing_reason

            problem = missing_reason()
            if problem:
                log(f"PostgreSQL variant not measured: {problem}")
                bench.record({"scenario": "P", "variant": "postgres", "median": {},
                              "not_measured": problem})
            else:
                pg = PgServer()
                await asyncio.to_thread(pg.start)
                await side_by_side(bench, "P", [
                    {"label": "sqlite", "journal": f"sqlite:///{bench.dir / 'side.db'}"},
                    {"label": "postgres", "journal": pg.url}],
                    args.nv, args.c, args.repeat_variants, 0)
                await asyncio.to_thread(pg.cleanup)
                pg = None
        if "B" in only:
            parked_path = bench.dir / "parked.db"
            await bench.start_coordinator("parked", f"sqlite:///{parked_path}")
            await warm_up(bench, 100)
            await in_flight(bench, args.nb, parked_path)
            await bench.stop_coordinator()
    finally:
        await bench.stop_coordinator()
        if pg is not None:
            await asyncio.to_thread(pg.cleanup)
        if bench.session is not None:
            await bench.session.close()
        await bench.services.stop()
    report(bench)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--quick", action="store_true", help="small N everywhere (smoke run)")
    parser.add_argument("--only", default="", help="subset of A,D,C,1,T,P,B")
    parser.add_argument("-n", type=int, default=None, help="sagas per throughput batch (2000)")
    parser.add_argument("-c", type=int, default=None, help="concurrency (100)")
    parser.add_argument("--repeat", type=int, default=None, help="headline repeats (3)")
    parser.add_argument("--repeat-variants", type=int, default=None,
                        help="repeats of the tracing and PostgreSQL variants (3; quick 1)")
    parser.add_argument("--mixes", action="store_true", help="run the failure mixes in --quick")
    parser.add_argument("--field", action="store_true",
                        help="also the field-reference shape: 500 sagas at 50, 3 times")
    parser.add_argument("--nv", type=int, default=None,
                        help="sagas per batch of the tracing and PostgreSQL variants (1000)")
    parser.add_argument("--nb", type=int, default=None, help="scenario B in-flight sagas (10000)")
    parser.add_argument("--nd", type=int, default=20, help="dedicated sagas")
    parser.add_argument("--cd", type=int, default=10, help="dedicated concurrency")
    parser.add_argument("--n1", type=int, default=None, help="one-at-a-time sagas (200)")
    parser.add_argument("--nc", type=int, default=None, help="light start-latency sagas (200)")
    parser.add_argument("--light-rate", type=float, default=20.0, help="light load, sagas/s")
    parser.add_argument("--half-seconds", type=float, default=None,
                        help="duration of the half-peak start-latency run (10)")
    parser.add_argument("--assume-peak", type=float, default=None,
                        help="peak sagas/s for C when A is not run")
    parser.add_argument("--hosts", type=int, default=2, help="SagaHosts (2)")
    parser.add_argument("--patch", default="",
                        help="apply bench.experiments patches in the coordinator (A/B runs)")
    parser.add_argument("--gil", action="store_true",
                        help="with --profile: sample only the thread holding the GIL")
    parser.add_argument("--profile-tracing", action="store_true",
                        help="with --profile: tracing on (OTLP to the local receiver)")
    parser.add_argument("--ab", default="", metavar="PATCHES",
                        help="only A/B: unpatched vs patched coordinators, alternated")
    parser.add_argument("--ab-base", default="", metavar="PATCHES",
                        help="patches of the A/B baseline side (default: none)")
    parser.add_argument("--ab-base-tree", default="", metavar="PATH",
                        help="A/B: the baseline side runs the code of another checkout "
                             "(e.g. a git worktree of an older commit) against this tree")
    parser.add_argument("--ab-tracing", action="store_true",
                        help="A/B with tracing on in both coordinators")
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                        help="only profile a load run with py-spy for SECONDS")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"n": (300, 2000), "c": (50, 100), "repeat": (1, 3), "repeat_variants": (1, 3),
                "nb": (2000, 10000), "nv": (300, 1000), "n1": (50, 200), "nc": (60, 200),
                "half_seconds": (4, 10)}
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    return args


def main() -> None:
    sys.exit(asyncio.run(run(parse())))


if __name__ == "__main__":
    main()
