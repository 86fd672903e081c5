"""The scenarios' measurements: batches, one at a time, start latency, scale in flight."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from bench import load
from bench.harness import SAGA, SAGA_PARKED, Bench, NotMeasured, log
from bench.proc_stats import (
    CpuSnapshot,
    coordinator_memory,
    cpu_delta,
    loadavg,
    self_cpu,
)

# -- measuring one batch --------------------------------------------------------------


def summary(batch: load.Batch) -> dict[str, Any]:
    ms = [x * 1000 for x in batch.latencies]
    return {"n": batch.n, "concurrency": batch.concurrency, "seconds": round(batch.seconds, 3),
            "sagas_per_s": round(batch.rate, 1),
            "p50_ms": round(load.percentile(ms, 50), 2),
            "p95_ms": round(load.percentile(ms, 95), 2),
            "p99_ms": round(load.percentile(ms, 99), 2), "outcomes": batch.outcomes,
            **({"errors": batch.errors} if batch.errors else {})}


async def _measured(bench: Bench, running: Awaitable[load.Batch], watch_pid: int | None = None
                    ) -> tuple[load.Batch, dict[str, Any], dict[str, float]]:
    """Run one batch with the counts both sides report: calls the services received,
    their CPU and this process's per saga, the load average before and after; and the
    CPU of ``watch_pid``'s process tree over the batch alone (empty without one)."""
    await bench.ctl("POST", "/_bench/reset")
    before_load = loadavg()
    calls_before = (await bench.ctl("GET", "/_bench/stats"))["requests"]
    svc_pid = int(bench.services.info["pid"])
    svc_before = CpuSnapshot.take(svc_pid)
    snap = CpuSnapshot.take(watch_pid) if watch_pid is not None else None
    me = self_cpu()
    batch = await running
    me = self_cpu() - me
    cpu = cpu_delta(snap, CpuSnapshot.take(snap.root)) if snap is not None else {}
    svc_cpu = cpu_delta(svc_before, CpuSnapshot.take(svc_pid))["api"]
    calls = (await bench.ctl("GET", "/_bench/stats"))["requests"] - calls_before
    out = summary(batch)
    out.update({"service_calls": calls,
                "own_cpu_ms_per_saga": round(me * 1000 / batch.n, 2),
                "services_cpu_ms_per_saga": round(svc_cpu * 1000 / batch.n, 2),
                "load": [before_load[0], loadavg()[0]]})
    return batch, out, cpu


async def measure_sagaray(bench: Bench, saga: str, inputs: list[dict[str, Any]],
                          concurrency: int) -> dict[str, Any]:
    batch, out, cpu = await _measured(bench, load.sagaray_batch(
        bench.http, bench.api, saga, inputs, concurrency), bench.api_pid)
    calls = out["service_calls"]
    out.update({
        "cpu_s": {k: round(v, 2) for k, v in cpu.items() if v},
        "coordinator_cpu_ms_per_saga": round(cpu["coordinator"] * 1000 / batch.n, 2),
        "coordinator_cpu_ms_per_call": round(cpu["coordinator"] * 1000 / max(calls, 1), 3),
        "ray_system_cpu_ms_per_saga": round(
            (cpu.get("ray_system", 0) + cpu.get("ray_idle_workers", 0)) * 1000 / batch.n, 2),
        "loadgen_cpu_ms_per_saga": out.pop("own_cpu_ms_per_saga"),
    })
    return out


async def measure_raw(bench: Bench, inputs: list[dict[str, Any]],
                      concurrency: int) -> dict[str, Any]:
    _, out, _ = await _measured(bench, load.raw_batch(bench.http, bench.urls, inputs,
                                                   concurrency))
    out["client_cpu_ms_per_saga"] = out.pop("own_cpu_ms_per_saga")
    return out


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(run[key] for run in runs)), 2)


async def compare(bench: Bench, label: str, mix: str, n: int, concurrency: int,
                  repeat: int, saga: str = SAGA, raw: bool = True) -> dict[str, Any]:
    """Raw floor and Sagaray, interleaved ``repeat`` times; medians of each."""
    runs: list[dict[str, Any]] = []
    for index in range(repeat):
        inputs = load.make_inputs(mix, n, seed=index + 1)
        run: dict[str, Any] = {}
        if raw:
            run["raw"] = await measure_raw(bench, inputs, concurrency)
        run["sagaray"] = await measure_sagaray(bench, saga, inputs, concurrency)
        if raw:
            run["ratio"] = round(run["sagaray"]["sagas_per_s"] / run["raw"]["sagas_per_s"], 3)
        s = run["sagaray"]
        log(f"{label} {mix} run {index + 1}/{repeat}: sagaray {s['sagas_per_s']}/s "
            f"p50 {s['p50_ms']} p99 {s['p99_ms']} ms, "
            f"{s['coordinator_cpu_ms_per_call']} CPU ms/call"
            + (f"; raw {run['raw']['sagas_per_s']}/s, ratio {run['ratio']}" if raw else "")
            + f" {s['outcomes']}")
        runs.append(run)
    sag = [r["sagaray"] for r in runs]
    med: dict[str, Any] = {
        key: median_of(sag, key)
        for key in ("sagas_per_s", "p50_ms", "p95_ms", "p99_ms", "coordinator_cpu_ms_per_saga",
                    "coordinator_cpu_ms_per_call", "ray_system_cpu_ms_per_saga")}
    if raw:
        raws = [r["raw"] for r in runs]
        med.update({"raw_sagas_per_s": median_of(raws, "sagas_per_s"),
                    "raw_p50_ms": median_of(raws, "p50_ms"),
                    "raw_client_cpu_ms_per_saga": median_of(raws, "client_cpu_ms_per_saga"),
                    "ratio": round(statistics.median(r["ratio"] for r in runs), 3)})
    loads = [x for r in runs for part in ("raw", "sagaray") if part in r for x in r[part]["load"]]
    med["load_1m"] = [min(loads), max(loads)]
    return bench.record({"scenario": "A" if saga == SAGA else "D", "variant": label, "mix": mix,
                         "n": n, "concurrency": concurrency, "repeat": repeat,
                         "median": med, "runs": runs})


async def warm_up(bench: Bench, n: int = 200) -> None:
    inputs = load.make_inputs("ok", n, seed=99)
    batch = await load.sagaray_batch(bench.http, bench.api, SAGA, inputs, 50)
    await load.raw_batch(bench.http, bench.urls, inputs, 50)
    log(f"warm-up: {batch.n} sagas in {batch.seconds:.1f}s {batch.outcomes}")
    if batch.outcomes.get("error"):
        # A coordinator that cannot run the saga would yield fast, meaningless figures.
        raise NotMeasured(f"{batch.outcomes['error']} of {batch.n} warm-up sagas failed: "
                          f"{batch.outcomes}")


# -- scenarios ------------------------------------------------------------------------


async def one_at_a_time(bench: Bench, label: str, n: int) -> dict[str, Any]:
    inputs = load.make_inputs("ok", n, seed=11)
    raw = await measure_raw(bench, inputs, 1)
    sag = await measure_sagaray(bench, SAGA, inputs, 1)
    log(f"one at a time: sagaray p50 {sag['p50_ms']} ms, raw p50 {raw['p50_ms']} ms")
    phases = await timeline(bench, min(n, 50))
    return bench.record({"scenario": "1", "variant": label, "mix": "ok", "n": n,
                         "concurrency": 1, "phases_ms": phases, "median": {
                             "p50_ms": sag["p50_ms"], "p99_ms": sag["p99_ms"],
                             "raw_p50_ms": raw["p50_ms"],
                             "coordinator_cpu_ms_per_saga": sag["coordinator_cpu_ms_per_saga"],
                             "load_1m": [raw["load"][0], sag["load"][1]]},
                         "runs": [{"raw": raw, "sagaray": sag}]})


async def timeline(bench: Bench, n: int) -> dict[str, float]:
    """Where one saga's time goes, one at a time: client clock vs the journal's ``at``s.

    Phases (medians, ms): ``api_to_journal`` POST sent -> ExecutionStarted.at (the API's
    clock when it accepted); ``to_host`` -> HostAssigned.at (journal create, Ray call,
    claim); ``steps`` -> the last step's reply event; ``to_terminal`` -> the terminal
    event; ``answer`` terminal event -> the response read by the client.
    """
    phases: dict[str, list[float]] = {k: [] for k in (
        "api_to_journal", "to_host", "steps", "to_terminal", "answer", "total")}
    for value in load.make_inputs("ok", n, seed=41):
        sent = time.time()
        async with bench.http.post(f"{bench.api}/v1/sagas/{SAGA}/executions?wait=60",
                                   json={"input": value}) as response:
            body = await response.json(content_type=None)
        got = time.time()
        async with bench.http.get(
                f"{bench.api}/v1/executions/{body['execution_id']}/events") as response:
            events = (await response.json(content_type=None))["events"]
        ats = [(str(e["type"]), float(e["at"])) for e in events]
        started = next(a for t, a in ats if t == "execution_started")
        host = next(a for t, a in ats if t == "host_assigned")
        last_reply = [a for t, a in ats
                      if t in ("step_attempt_succeeded", "step_attempt_failed")][-1]
        end = ats[-1][1]
        for name, value_ms in (("api_to_journal", started - sent), ("to_host", host - started),
                               ("steps", last_reply - host), ("to_terminal", end - last_reply),
                               ("answer", got - end), ("total", got - sent)):
            phases[name].append(value_ms * 1000)
    out = {k: round(statistics.median(v), 2) for k, v in phases.items()}
    log(f"one saga's time (medians, ms): {out}")
    return out


async def open_loop(bench: Bench, rate: float, n: int) -> list[tuple[str, float, float]]:
    """Start ``n`` sagas at ``rate`` per second (fixed interval), without waiting for them."""
    inputs = load.make_inputs("ok", n, seed=23)
    tasks: list[asyncio.Task[tuple[str, float, float]]] = []
    began = time.perf_counter()
    for index, value in enumerate(inputs):
        delay = began + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(load.start_only(bench.http, bench.api, SAGA, value)))
    done = await asyncio.gather(*tasks, return_exceptions=True)
    ok = [d for d in done if not isinstance(d, BaseException)]
    # Let every one of them finish before the next figure.
    await load.closed_loop(len(ok), 50, lambda i: _wait_for(bench, ok[i][0]))
    return ok


async def _wait_for(bench: Bench, execution_id: str) -> str:
    status = ""
    while status not in load.TERMINAL:
        async with bench.http.get(f"{bench.api}/v1/executions/{execution_id}?wait=60") as resp:
            status = (await resp.json(content_type=None))["status"]
    return status


async def start_latency(bench: Bench, label: str, rate: float, n: int,
                        what: str) -> dict[str, Any]:
    await bench.ctl("POST", "/_bench/reset")
    before = loadavg()
    started = await open_loop(bench, rate, n)
    arrivals = (await bench.ctl("GET", "/_bench/arrivals?clear=1"))["arrivals"]
    first_call = [(arrivals[eid] - sent) * 1000 for eid, sent, _ in started if eid in arrivals]
    answered = [(ans - sent) * 1000 for _, sent, ans in started]
    out = {"rate_per_s": round(rate, 1), "n": n, "measured": len(first_call),
           "first_call_p50_ms": round(load.percentile(first_call, 50), 2),
           "first_call_p99_ms": round(load.percentile(first_call, 99), 2),
           "first_call_max_ms": round(max(first_call, default=float("nan")), 2),
           "answer_202_p50_ms": round(load.percentile(answered, 50), 2),
           "answer_202_p99_ms": round(load.percentile(answered, 99), 2),
           "load_1m": [before[0], loadavg()[0]]}
    log(f"start latency ({what}, {rate:.0f}/s): first call p50 {out['first_call_p50_ms']} "
        f"p99 {out['first_call_p99_ms']} ms; 202 p50 {out['answer_202_p50_ms']} ms")
    return bench.record({"scenario": "C", "variant": label, "load": what, "median": out})


def _journal_counts(path: Path) -> tuple[int, int, int]:
    """(on a host and running, at the held charge step, finished) of the parked saga."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        running = conn.execute(
            "SELECT count(*) FROM executions WHERE saga = ? AND status = 'running'"
            " AND owner IS NOT NULL", (SAGA_PARKED,)).fetchone()[0]
        at_charge = conn.execute(
            "SELECT count(*) FROM events JOIN executions USING (execution_id)"
            " WHERE saga = ? AND type = 'step_attempt_started'"
            " AND json_extract(data, '$.step') = 'charge_payment'", (SAGA_PARKED,)).fetchone()[0]
        done = conn.execute("SELECT count(*) FROM executions WHERE saga = ? AND status IN"
                            " ('completed', 'compensated', 'failed')", (SAGA_PARKED,)).fetchone()[0]
        return int(running), int(at_charge), int(done)
    finally:
        conn.close()


def _memory_total(mem: dict[str, dict[str, int]], key: str) -> int:
    return sum(v.get(key, 0) for v in mem.values())


async def in_flight(bench: Bench, n: int, journal_path: Path) -> dict[str, Any]:
    await bench.ctl("POST", "/_bench/reset")
    before_load = loadavg()
    idle = coordinator_memory(bench.api_pid)
    await bench.ctl("POST", "/_bench/gate", {"closed": True, "path": "/charges"})
    inputs = load.make_inputs("ok", n, seed=31)
    began = time.perf_counter()
    starts = await load.closed_loop(
        n, 200, lambda i: _start(bench, SAGA_PARKED, inputs[i]))
    start_seconds = time.perf_counter() - began
    log(f"B: {n} started in {start_seconds:.1f}s {starts.outcomes}")
    # Parked: every execution runs on a host, and the hold has stopped filling up. Only
    # as many requests as the hosts' connection pools allow reach the held service; the
    # other executions wait in those pools (for any service: the pool is shared).
    parked = at_charge = held = 0
    deadline = time.perf_counter() + max(120.0, n / 20)
    while time.perf_counter() < deadline:
        parked, at_charge, _ = await asyncio.to_thread(_journal_counts, journal_path)
        gate = await bench.ctl("GET", "/_bench/gate")
        if parked >= n and gate["held"] == held:
            break
        held = gate["held"]
        await asyncio.sleep(2.0)
    parked_seconds = time.perf_counter() - began
    await asyncio.sleep(2.0)  # settle, then read the plateau
    gate = await bench.ctl("GET", "/_bench/gate")
    plateau = coordinator_memory(bench.api_pid)
    cpu_before = CpuSnapshot.take(bench.api_pid)
    log(f"B: {parked}/{n} running on hosts after {parked_seconds:.1f}s, {at_charge} at the held "
        f"step, {gate['held']} requests held in the service; "
        f"RSS {_memory_total(plateau, 'VmRSS') / 1024:.0f} MiB")
    released = time.perf_counter()
    await bench.ctl("POST", "/_bench/gate", {"closed": False})
    done = 0
    deadline = released + max(300.0, n / 10)
    while time.perf_counter() < deadline:
        _, _, done = await asyncio.to_thread(_journal_counts, journal_path)
        if done >= n:
            break
        await asyncio.sleep(0.25)
    finish_seconds = time.perf_counter() - released
    cpu = cpu_delta(cpu_before, CpuSnapshot.take(bench.api_pid))
    after = coordinator_memory(bench.api_pid)
    grown = _memory_total(plateau, "VmRSS") - _memory_total(idle, "VmRSS")
    out = {
        "n": n, "parked": parked, "at_held_step": at_charge, "finished": done,
        "start_seconds": round(start_seconds, 1),
        "start_rate_per_s": round(n / start_seconds, 1),
        "held_in_service_at_once": gate["held"],
        "idle_rss_mib": round(_memory_total(idle, "VmRSS") / 1024, 1),
        "parked_rss_mib": round(_memory_total(plateau, "VmRSS") / 1024, 1),
        "peak_rss_mib_sum_of_hwm": round(_memory_total(after, "VmHWM") / 1024, 1),
        "kib_per_in_flight_saga": round(grown / max(parked, 1), 1),
        "finish_seconds_after_release": round(finish_seconds, 1),
        "finish_rate_per_s": round(done / finish_seconds, 1) if finish_seconds else None,
        "coordinator_cpu_s_to_finish": round(cpu["coordinator"], 1),
        "processes": {name: {"idle_rss_mib": round(idle.get(name, {}).get("VmRSS", 0) / 1024, 1),
                             "parked_rss_mib": round(
                                 plateau.get(name, {}).get("VmRSS", 0) / 1024, 1),
                             "peak_hwm_mib": round(after.get(name, {}).get("VmHWM", 0) / 1024, 1)}
                      for name in after},
        "load_1m": [before_load[0], loadavg()[0]],
    }
    log(f"B: all {done} finished {finish_seconds:.1f}s after release; "
        f"{out['kib_per_in_flight_saga']} KiB per in-flight saga; "
        f"peak {out['peak_rss_mib_sum_of_hwm']} MiB")
    return bench.record({"scenario": "B", "variant": "shared/sqlite", "median": out})


async def _start(bench: Bench, saga: str, value: dict[str, Any]) -> str:
    await load.start_only(bench.http, bench.api, saga, value)
    return "started"
