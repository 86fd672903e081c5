"""The suite's output: the table on stdout and ``bench/results/<date>.json``."""

from __future__ import annotations

import datetime as dt
import json
import platform
import shlex
import sys
import time
from typing import Any

from bench.harness import RESULTS, ROOT, Bench
from bench.proc_stats import (
    loadavg,
    machine,
)


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
