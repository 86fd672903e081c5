"""``--profile``: py-spy and per-thread CPU of the coordinator under load."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from bench import load
from bench.harness import SAGA, Bench
from bench.proc_stats import (
    thread_cpu,
    tid_cpu,
    tree,
)

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
