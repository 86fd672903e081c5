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
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import signal
import sqlite3
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench import load
from bench.proc_stats import (
    CpuSnapshot,
    coordinator_memory,
    cpu_delta,
    loadavg,
    machine,
    self_cpu,
    thread_cpu,
    tid_cpu,
    tree,
)

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".sagaray" / "bench"
RESULTS = Path(__file__).resolve().parent / "results"
SAGA = "bench_three_step"
SAGA_DEDICATED = "bench_three_step_dedicated"
SAGA_PARKED = "bench_three_step_parked"
STARTUP_TIMEOUT = 180.0


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp} load {loadavg()[0]:.2f}] {message}", file=sys.stderr, flush=True)


# -- child processes ------------------------------------------------------------------


class Child:
    """A ``python -m bench.procs ...`` child: one JSON line when ready, stops on SIGTERM."""

    def __init__(self, name: str, args: list[str], tree: Path | None = None) -> None:
        self.name = name
        self.args = args
        # Another checkout whose coordinator code this child runs (A/B across commits).
        self.tree = tree
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}

    async def start(self) -> dict[str, Any]:
        WORK.mkdir(parents=True, exist_ok=True)
        stderr = (WORK / f"{self.name}.log").open("ab")
        env = dict(os.environ)
        if self.tree is not None:
            # First on the path of this process and of the Ray workers it starts.
            env["PYTHONPATH"] = os.pathsep.join([str(self.tree), env.get("PYTHONPATH", "")])
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.procs", *self.args, cwd=self.tree or ROOT, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            start_new_session=True)
        stderr.close()
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), STARTUP_TIMEOUT)
        except TimeoutError:
            await self.stop()
            raise RuntimeError(
                f"{self.name} did not start; see {WORK / (self.name + '.log')}") from None
        if not line:
            await self.stop()
            raise RuntimeError(f"{self.name} exited; see {WORK / (self.name + '.log')}")
        self.info = json.loads(line)
        return self.info

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            # Only the process group this suite started (start_new_session above).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


def services_yaml(urls: dict[str, str]) -> str:
    lines = ["services:"] + [f"  {name}:\n    url: {url}" for name, url in urls.items()]
    return "\n".join(lines) + "\n"


class Bench:
    """Shared state of one suite run: the services, the current coordinator, the results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = time.strftime("%Y%m%d-%H%M%S")
        self.dir = WORK / self.run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.services = Child("services", ["services"])
        self.coordinator: Child | None = None
        self.session: aiohttp.ClientSession | None = None
        self.results: list[dict[str, Any]] = []
        self.peak_rate: float | None = None

    @property
    def urls(self) -> dict[str, str]:
        return dict(self.services.info["urls"])

    @property
    def control(self) -> str:
        return str(self.services.info["control"])

    @property
    def api(self) -> str:
        assert self.coordinator is not None
        return str(self.coordinator.info["url"])

    @property
    def api_pid(self) -> int:
        assert self.coordinator is not None
        return int(self.coordinator.info["api_pid"])

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    async def start_coordinator(self, label: str, journal: str, otlp: str | None = None,
                                patch: str | None = None, tree: Path | None = None) -> None:
        services_file = self.dir / "services.yaml"
        services_file.write_text(services_yaml(self.urls))
        args = ["coordinator", "--journal", journal, "--services", str(services_file),
                "--hosts", str(self.args.hosts)]
        if otlp:
            args += ["--otlp", otlp]
        patch = self.args.patch if patch is None else patch
        if patch:
            args += ["--patch", patch]
        self.coordinator = Child(f"coordinator-{label}", args, tree)
        began = time.perf_counter()
        info = await self.coordinator.start()
        log(f"coordinator {label} up in {time.perf_counter() - began:.1f}s: {info}")

    async def stop_coordinator(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.stop()
            self.coordinator = None

    async def ctl(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.control + path, json=body) as response:
            response.raise_for_status()
            return await response.json()

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.results.append(entry)
        return entry


# -- measuring one batch --------------------------------------------------------------


def summary(batch: load.Batch) -> dict[str, Any]:
    ms = [x * 1000 for x in batch.latencies]
    return {"n": batch.n, "concurrency": batch.concurrency, "seconds": round(batch.seconds, 3),
            "sagas_per_s": round(batch.rate, 1),
            "p50_ms": round(load.percentile(ms, 50), 2),
            "p95_ms": round(load.percentile(ms, 95), 2),
            "p99_ms": round(load.percentile(ms, 99), 2), "outcomes": batch.outcomes,
            **({"errors": batch.errors} if batch.errors else {})}


async def measure_sagaray(bench: Bench, saga: str, inputs: list[dict[str, Any]],
                          concurrency: int) -> dict[str, Any]:
    await bench.ctl("POST", "/_bench/reset")
    before_load = loadavg()
    calls_before = (await bench.ctl("GET", "/_bench/stats"))["requests"]
    svc_pid = int(bench.services.info["pid"])
    svc_before = CpuSnapshot.take(svc_pid)
    snap = CpuSnapshot.take(bench.api_pid)
    me = self_cpu()
    batch = await load.sagaray_batch(bench.http, bench.api, saga, inputs, concurrency)
    me = self_cpu() - me
    cpu = cpu_delta(snap, CpuSnapshot.take(bench.api_pid))
    svc_cpu = cpu_delta(svc_before, CpuSnapshot.take(svc_pid))["api"]
    calls = (await bench.ctl("GET", "/_bench/stats"))["requests"] - calls_before
    out = summary(batch)
    out.update({
        "cpu_s": {k: round(v, 2) for k, v in cpu.items() if v},
        "coordinator_cpu_ms_per_saga": round(cpu["coordinator"] * 1000 / batch.n, 2),
        "service_calls": calls,
        "coordinator_cpu_ms_per_call": round(cpu["coordinator"] * 1000 / max(calls, 1), 3),
        "ray_system_cpu_ms_per_saga": round(
            (cpu.get("ray_system", 0) + cpu.get("ray_idle_workers", 0)) * 1000 / batch.n, 2),
        "services_cpu_ms_per_saga": round(svc_cpu * 1000 / batch.n, 2),
        "loadgen_cpu_ms_per_saga": round(me * 1000 / batch.n, 2),
        "load": [before_load[0], loadavg()[0]],
    })
    return out


async def measure_raw(bench: Bench, inputs: list[dict[str, Any]],
                      concurrency: int) -> dict[str, Any]:
    await bench.ctl("POST", "/_bench/reset")
    before_load = loadavg()
    calls_before = (await bench.ctl("GET", "/_bench/stats"))["requests"]
    svc_pid = int(bench.services.info["pid"])
    svc_before = CpuSnapshot.take(svc_pid)
    me = self_cpu()
    batch = await load.raw_batch(bench.http, bench.urls, inputs, concurrency)
    me = self_cpu() - me
    svc_cpu = cpu_delta(svc_before, CpuSnapshot.take(svc_pid))["api"]
    calls = (await bench.ctl("GET", "/_bench/stats"))["requests"] - calls_before
    out = summary(batch)
    out.update({"service_calls": calls,
                "client_cpu_ms_per_saga": round(me * 1000 / batch.n, 2),
                "services_cpu_ms_per_saga": round(svc_cpu * 1000 / batch.n, 2),
                "load": [before_load[0], loadavg()[0]]})
    return out


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(run[key] for run in runs), 2)


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


# -- profile --------------------------------------------------------------------------


async def profile(bench: Bench, seconds: int) -> None:
    """py-spy (Python stacks) and per-thread CPU of the API and host processes under load."""
    pyspy = Path(sys.executable).parent / "py-spy"
    if not pyspy.exists():
        raise SystemExit(f"--profile needs py-spy in the virtualenv ({pyspy}): "
                         "pip install py-spy")
    procs = tree(bench.api_pid)
    targets = {pid: p.kind for pid, p in procs.items() if p.kind in ("api", "hosts")}
    out_dir = bench.dir / "profile"
    out_dir.mkdir(exist_ok=True)
    threads_before = {pid: thread_cpu(pid) for pid in targets}
    tids_before = {pid: tid_cpu(pid) for pid in targets}
    spies = []
    extra = ["--gil"] if bench.args.gil else []
    for pid, kind in targets.items():
        path = out_dir / f"{kind}-{pid}.txt"
        spies.append(await asyncio.create_subprocess_exec(
            str(pyspy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
            "--format", "raw", "--output", str(path), "--nonblocking", "--threads", *extra,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
    n = bench.args.n * 10
    inputs = load.make_inputs("ok", n, seed=5)
    task = asyncio.create_task(load.sagaray_batch(bench.http, bench.api, SAGA, inputs,
                                                  bench.args.c))
    await asyncio.sleep(seconds / 2)
    for pid, kind in targets.items():
        dump = await asyncio.create_subprocess_exec(
            str(pyspy), "dump", "--pid", str(pid), "--nonblocking",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        text, _ = await dump.communicate()
        heads = [ln for ln in text.decode(errors="replace").splitlines()
                 if ln.startswith(("Thread", "Process"))]
        print(f"== {kind} pid {pid} threads (py-spy dump):\n  " + "\n  ".join(heads))
    await asyncio.gather(*(spy.wait() for spy in spies))
    for pid, kind in targets.items():
        after = tid_cpu(pid)
        used = sorted(((cpu - tids_before[pid].get(tid, (name, 0.0))[1], tid, name)
                       for tid, (name, cpu) in after.items()), reverse=True)
        print(f"== {kind} pid {pid} CPU s per thread id: " + ", ".join(
            f"{tid}{'(main)' if tid == pid else ''} {name} {cpu:.2f}"
            for cpu, tid, name in used[:10] if cpu > 0))
    threads = {pid: {name: round(cpu - threads_before[pid].get(name, 0.0), 2)
                     for name, cpu in thread_cpu(pid).items()} for pid in targets}
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for pid, kind in targets.items():
        busy = {k: v for k, v in sorted(threads[pid].items(), key=lambda kv: -kv[1]) if v > 0}
        print(f"\n== {kind} pid {pid}: CPU s per thread over {seconds}s: {busy}")
        path = out_dir / f"{kind}-{pid}.txt"
        if path.exists():
            print(summarize_pyspy(path))
    print(f"\nraw py-spy stacks in {out_dir}")


def summarize_pyspy(path: Path, top: int = 22) -> str:
    """Self and inclusive sample shares by function from py-spy's raw (collapsed) output."""
    total = 0
    self_counts: dict[str, int] = {}
    incl: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        total += count
        if frames:
            self_counts[_short(frames[-1])] = self_counts.get(_short(frames[-1]), 0) + count
        for name in {_short(f) for f in frames}:
            incl[name] = incl.get(name, 0) + count
    lines = [f"-- {path.name}: {total} samples; top self:"]
    for name, count in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * count / max(total, 1):5.1f}%  {name}")
    lines.append("-- top inclusive (coordinator, services-client and library entry points):")
    for name, count in sorted(incl.items(), key=lambda kv: -kv[1])[: top * 2]:
        lines.append(f"  {100 * count / max(total, 1):5.1f}%  {name}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)" relative to site-packages / repo
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


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


class NotMeasured(Exception):
    """A variant that could not run here; the reason goes in the results."""


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


def report(bench: Bench) -> None:
    args = bench.args
    doc = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python -m bench.suite", *map(shlex.quote, sys.argv[1:])]),
        "machine": {**machine(), "python": platform.python_version(),
                    "ray": _ray_version(), "load_at_end": loadavg()},
        "settings": {"n": args.n, "c": args.c, "repeat": args.repeat, "hosts": args.hosts,
                     "quick": args.quick, "patches": args.patch or None},
        "results": [_compact(r) for r in bench.results],
    }
    RESULTS.mkdir(exist_ok=True)
    suffix = ("-quick" if args.quick else "") + (f"-patch-{args.patch}" if args.patch else "")
    if args.ab or args.ab_base_tree:
        suffix += f"-ab-{args.ab_base or 'base'}-vs-{args.ab or 'tree'}"
    path = RESULTS / f"{time.strftime('%Y-%m-%d')}{suffix.replace(',', '+')}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(table(bench.results))
    print(f"\nresults: {path.relative_to(ROOT)}")


def _compact(entry: dict[str, Any]) -> dict[str, Any]:
    """The JSON keeps medians and per-run headline numbers, not every latency."""
    out = {k: v for k, v in entry.items() if k != "runs"}
    if "runs" in entry:
        out["runs"] = [{part: {k: v for k, v in run[part].items()
                               if k in ("sagas_per_s", "p50_ms", "p99_ms", "load", "outcomes",
                                        "coordinator_cpu_ms_per_call", "cpu_s", "errors",
                                        "otlp_posts")}
                        for part in ("raw", "sagaray") if part in run} for run in entry["runs"]]
    return out


def table(results: list[dict[str, Any]]) -> str:
    rows = [("scenario", "variant", "mix/load", "N@C", "sagas/s", "raw/s", "ratio", "p50 ms",
             "p95 ms", "p99 ms", "CPU ms/step", "load 1m")]
    for r in results:
        m = r.get("median", {})
        load_1m = m.get("load_1m")
        load_text = f"{load_1m[0]:.2f}-{load_1m[1]:.2f}" if load_1m else ""
        if r.get("not_measured"):
            rows.append((r["scenario"], r["variant"], "", "", "not measured", "", "", "", "", "",
                         "", r["not_measured"][:40]))
        elif r["scenario"] in ("AB", "T", "P"):
            one = m.get("one_at_a_time_p50_ms")
            rows.append((r["scenario"], r["variant"], "ok (side by side)",
                         f"{r['n']}@{r['concurrency']} x{r['repeat']}",
                         _f(m["sagas_per_s"]), "", "", _f(m["p50_ms"]), _f(m["p95_ms"]),
                         _f(m["p99_ms"]), _f(m["coordinator_cpu_ms_per_call"], 2),
                         load_text + (f" (1 at a time p50 {_f(one)} ms)" if one else "")))
        elif r["scenario"] in ("A", "D"):
            rows.append((r["scenario"], r["variant"], r["mix"], f"{r['n']}@{r['concurrency']}"
                         + (f" x{r['repeat']}" if r.get("repeat", 1) > 1 else ""),
                         _f(m.get("sagas_per_s")), _f(m.get("raw_sagas_per_s")),
                         _f(m.get("ratio"), 2), _f(m.get("p50_ms")), _f(m.get("p95_ms")),
                         _f(m.get("p99_ms")), _f(m.get("coordinator_cpu_ms_per_call"), 2),
                         load_text))
        elif r["scenario"] == "1":
            rows.append(("1", r["variant"], "one at a time", f"{r['n']}@1", "", "", "",
                         f"{_f(m['p50_ms'])} (raw {_f(m['raw_p50_ms'])})", "",
                         _f(m["p99_ms"]), _f(m["coordinator_cpu_ms_per_saga"] / 3, 2),
                         load_text))
        elif r["scenario"] == "C":
            rows.append(("C", r["variant"], f"start, {r['load']}",
                         f"{m['n']}@{m['rate_per_s']}/s", "", "", "",
                         f"{_f(m['first_call_p50_ms'])} (202: {_f(m['answer_202_p50_ms'])})",
                         "", _f(m["first_call_p99_ms"]), "", load_text))
        elif r["scenario"] == "B":
            rows.append(("B", r["variant"], f"{m['parked']} parked",
                         f"{m['n']}", f"{_f(m['finish_rate_per_s'])}", "", "",
                         f"finish {m['finish_seconds_after_release']} s", "", "",
                         f"{m['kib_per_in_flight_saga']} KiB/saga, peak "
                         f"{m['peak_rss_mib_sum_of_hwm']} MiB", load_text))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}"


def _ray_version() -> str:
    try:
        from importlib.metadata import version

        return version("ray")
    except Exception:
        return "?"


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
